//! POSIX namespace semantics, one behaviour per test.

use fs_core::testkit::acl;
use fs_core::testkit::pb;

use crate::setup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_lookup_getattr_and_kinds() {
    let (_srv, fs) = setup().await;
    let f = fs.create("f").await.unwrap();
    assert_eq!((f.kind(), f.perm, f.nlink, f.size), (pb::FileKind::Regular, 0o644, 1, 0));
    assert_eq!(fs.create("f").await.unwrap_err(), libc::EEXIST);
    let d = fs.mkdir("d").await.unwrap();
    assert_eq!((d.kind(), d.nlink), (pb::FileKind::Directory, 2));
    assert_eq!(fs.getattr(fs.base).await.unwrap().nlink, 3, "a subdirectory adds a link to its parent");
    for (name, kind) in [
        ("fifo", pb::FileKind::Fifo),
        ("sock", pb::FileKind::Socket),
        ("chr", pb::FileKind::CharDevice),
        ("blk", pb::FileKind::BlockDevice),
    ] {
        assert_eq!(fs.mknod(name, kind, 0o600).await.unwrap().kind(), kind);
    }
    let l = fs.symlink("l", "../some/where").await.unwrap();
    assert_eq!((l.kind(), l.size, l.perm), (pb::FileKind::Symlink, 13, 0o777));
    assert_eq!(fs.readlink(l.ino).await.unwrap(), b"../some/where");
    assert_eq!(fs.readlink(f.ino).await.unwrap_err(), libc::EINVAL);
    assert_eq!(fs.lookup(fs.base, b"nope").await.unwrap_err(), libc::ENOENT);
    assert_eq!(fs.lookup(f.ino, b"x").await.unwrap_err(), libc::ENOTDIR);
    assert_eq!(fs.lookup(d.ino, b"..").await.unwrap().ino, fs.base);
    assert_eq!(fs.lookup(fs.base, b"..").await.unwrap().ino, fs.base, "`..` of the root is the root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_rmdir_and_an_open_unlinked_file_lives_until_last_close() {
    let (_srv, fs) = setup().await;
    fs.mkdir("d").await.unwrap();
    fs.create("d/f").await.unwrap();
    assert_eq!(fs.rmdir("d").await.unwrap_err(), libc::ENOTEMPTY);
    assert_eq!(fs.unlink("d").await.unwrap_err(), libc::EISDIR);
    assert_eq!(fs.rmdir("d/f").await.unwrap_err(), libc::ENOTDIR);

    let (a, open_id) = fs.create_open("d/g", true).await.unwrap();
    fs.write_block(a.ino, 0, 0, 100, 100, false).await.unwrap();
    fs.unlink("d/g").await.unwrap();
    assert_eq!(fs.lookup(fs.resolve("d").await.unwrap(), b"g").await.unwrap_err(), libc::ENOENT);
    let still = fs.getattr(a.ino).await.unwrap();
    assert_eq!((still.nlink, still.size), (0, 100), "an unlinked open file keeps its data");
    assert_eq!(fs.blocks(a.ino).await.unwrap().len(), 1);
    fs.release(open_id, vec![]).await.unwrap();
    assert_eq!(fs.getattr(a.ino).await.unwrap_err(), libc::ENOENT, "the last close deletes it");

    fs.unlink("d/f").await.unwrap();
    fs.rmdir("d").await.unwrap();
    assert_eq!(fs.getattr(fs.base).await.unwrap().nlink, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_count_and_survive_unlink() {
    let (_srv, fs) = setup().await;
    let f = fs.create("f").await.unwrap();
    fs.mkdir("d").await.unwrap();
    assert_eq!(fs.link("f", "d/g").await.unwrap().nlink, 2);
    assert_eq!(fs.link("f", "d/g").await.unwrap_err(), libc::EEXIST);
    assert_eq!(fs.link("d", "e").await.unwrap_err(), libc::EPERM, "directories cannot be hard-linked");
    fs.unlink("f").await.unwrap();
    let g = fs.lookup(fs.resolve("d").await.unwrap(), b"g").await.unwrap();
    assert_eq!((g.ino, g.nlink), (f.ino, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_replaces_by_posix_rules_and_supports_noreplace_and_exchange() {
    let (_srv, fs) = setup().await;
    fs.mkdir("a").await.unwrap();
    fs.mkdir("b").await.unwrap();
    let x = fs.create("a/x").await.unwrap();
    let y = fs.create("b/y").await.unwrap();
    // Across directories, replacing a file.
    fs.rename("a/x", "b/y", 0).await.unwrap();
    assert_eq!(fs.resolve("b/y").await.unwrap(), x.ino);
    assert_eq!(fs.getattr(y.ino).await.unwrap_err(), libc::ENOENT, "the replaced file is gone");
    // NOREPLACE refuses an existing target.
    fs.create("a/z").await.unwrap();
    assert_eq!(fs.rename("a/z", "b/y", ns::NOREPLACE).await.unwrap_err(), libc::EEXIST);
    // EXCHANGE swaps a file and a directory atomically, fixing the link counts.
    fs.mkdir("b/sub").await.unwrap();
    fs.rename("a/z", "b/sub", ns::EXCHANGE).await.unwrap();
    assert_eq!(fs.lookup(fs.resolve("a").await.unwrap(), b"z").await.unwrap().kind(), pb::FileKind::Directory);
    assert_eq!(fs.lookup(fs.resolve("b").await.unwrap(), b"sub").await.unwrap().kind(), pb::FileKind::Regular);
    assert_eq!(fs.getattr(fs.resolve("a").await.unwrap()).await.unwrap().nlink, 3);
    assert_eq!(fs.getattr(fs.resolve("b").await.unwrap()).await.unwrap().nlink, 2);
    assert_eq!(fs.lookup(fs.resolve("a/z").await.unwrap(), b"..").await.unwrap().ino, fs.resolve("a").await.unwrap());
    assert_eq!(fs.rename("a/z", "b/missing", ns::EXCHANGE).await.unwrap_err(), libc::ENOENT);
    // A directory over a non-empty directory, a file over a directory, a directory into itself.
    fs.mkdir("c").await.unwrap();
    fs.create("c/f").await.unwrap();
    assert_eq!(fs.rename("a", "c", 0).await.unwrap_err(), libc::ENOTEMPTY);
    assert_eq!(fs.rename("b/y", "c", 0).await.unwrap_err(), libc::EISDIR);
    assert_eq!(fs.rename("c", "b/y", 0).await.unwrap_err(), libc::ENOTDIR);
    assert_eq!(fs.rename("a", "a/z/in", 0).await.unwrap_err(), libc::EINVAL);
    // Onto an empty directory: allowed, and the parent loses the replaced directory's link.
    fs.mkdir("e").await.unwrap();
    fs.rename("a/z", "e", 0).await.unwrap();
    assert_eq!(fs.getattr(fs.base).await.unwrap().nlink, 2 + 4, "a, b, c, e");
    // Two links of one inode: rename does nothing.
    fs.link("b/y", "b/y2").await.unwrap();
    fs.rename("b/y", "b/y2", 0).await.unwrap();
    assert!(fs.resolve("b/y").await.is_ok() && fs.resolve("b/y2").await.is_ok());
}

mod ns {
    pub const NOREPLACE: u32 = 1;
    pub const EXCHANGE: u32 = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_cookies_are_stable_while_the_directory_changes() {
    let (_srv, fs) = setup().await;
    fs.mkdir("d").await.unwrap();
    for i in 0..50 {
        fs.create(&format!("d/f{i:02}")).await.unwrap();
    }
    let d = fs.resolve("d").await.unwrap();
    // Read 10, then delete some already-read and some not-yet-read entries and add new ones.
    let first =
        fs.s.rpc
            .clone()
            .read_dir(pb::ReadDirRequest { ctx: fs.ctx(), ino: d, cookie: 0, limit: 12, plus: false })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(first.entries[0].name, b".");
    assert_eq!(first.entries[1].name, b"..");
    let seen: Vec<Vec<u8>> = first.entries[2..].iter().map(|e| e.name.clone()).collect();
    assert_eq!(seen.len(), 10);
    fs.unlink("d/f00").await.unwrap();
    fs.unlink("d/f30").await.unwrap();
    fs.create("d/new").await.unwrap();
    let rest =
        fs.s.rpc
            .clone()
            .read_dir(pb::ReadDirRequest {
                ctx: fs.ctx(),
                ino: d,
                cookie: first.entries.last().unwrap().cookie,
                limit: 1000,
                plus: true,
            })
            .await
            .unwrap()
            .into_inner();
    assert!(rest.eof);
    let names: Vec<Vec<u8>> = rest.entries.iter().map(|e| e.name.clone()).collect();
    assert!(!names.iter().any(|n| seen.contains(n)), "no entry is returned twice");
    assert!(!names.contains(&b"f30".to_vec()), "a removed entry is not returned");
    assert!(names.contains(&b"new".to_vec()), "an entry added meanwhile is returned");
    assert_eq!(names.len(), 40 - 1 + 1);
    assert!(rest.entries.iter().all(|e| e.attr.is_some()), "readdirplus carries attributes");
    assert_eq!(fs.readdir(d, 7).await.unwrap().len(), 49);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setattr_rules_for_mode_owner_size_and_times() {
    let (_srv, mut fs) = setup().await;
    let f = fs.create("f").await.unwrap();
    let a = fs.setattr(f.ino, |r| r.perm = Some(0o6755)).await.unwrap();
    assert_eq!(a.perm, 0o6755);
    assert!(a.ctime.unwrap().sec >= f.ctime.unwrap().sec);
    assert!(a.change > f.change, "every change bumps the change counter");
    // chown clears setuid, and setgid with group execute.
    let a = fs.setattr(f.ino, |r| r.uid = Some(1000)).await.unwrap();
    assert_eq!((a.uid, a.perm), (1000, 0o0755));
    // A non-root caller outside the file's group cannot set setgid.
    fs.uid = 1000;
    fs.gid = 1000;
    let a = fs.setattr(f.ino, |r| r.perm = Some(0o2755)).await.unwrap();
    assert_eq!(a.perm, 0o0755);
    fs.uid = 0;
    fs.gid = 0;
    // Times.
    let t = pb::Timespec { sec: 1_000_000, nsec: 7 };
    let a = fs
        .setattr(f.ino, |r| {
            r.atime = Some(t);
            r.mtime = Some(t);
        })
        .await
        .unwrap();
    assert_eq!((a.atime, a.mtime), (Some(t), Some(t)));
    // Size on a directory or a symlink.
    let d = fs.mkdir("d").await.unwrap();
    assert_eq!(fs.setattr(d.ino, |r| r.size = Some(0)).await.unwrap_err(), libc::EISDIR);
    let l = fs.symlink("l", "f").await.unwrap();
    assert_eq!(fs.setattr(l.ino, |r| r.size = Some(0)).await.unwrap_err(), libc::EINVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_inodes_in_a_setgid_directory_take_its_group() {
    let (_srv, mut fs) = setup().await;
    let d = fs.mkdir("d").await.unwrap();
    fs.setattr(d.ino, |r| {
        r.gid = Some(500);
        r.perm = Some(0o2777);
    })
    .await
    .unwrap();
    fs.uid = 1000;
    fs.gid = 1000;
    let f = fs.create("d/f").await.unwrap();
    assert_eq!((f.uid, f.gid), (1000, 500));
    let sub = fs.mkdir("d/sub").await.unwrap();
    assert_eq!(sub.perm & 0o2000, 0o2000, "subdirectories inherit setgid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xattrs_with_create_and_replace_flags() {
    let (_srv, fs) = setup().await;
    let f = fs.create("f").await.unwrap();
    assert_eq!(fs.getxattr(f.ino, "user.a").await.unwrap_err(), libc::ENODATA);
    assert_eq!(
        fs.setxattr(f.ino, "user.a", b"1", 2).await.unwrap_err(),
        libc::ENODATA,
        "REPLACE needs an existing xattr"
    );
    fs.setxattr(f.ino, "user.a", b"1", 1).await.unwrap();
    assert_eq!(
        fs.setxattr(f.ino, "user.a", b"2", 1).await.unwrap_err(),
        libc::EEXIST,
        "CREATE refuses an existing xattr"
    );
    fs.setxattr(f.ino, "user.a", b"2", 2).await.unwrap();
    assert_eq!(
        fs.setxattr(f.ino, "system.posix_acl_access", &[2, 0, 0, 0], 0).await.unwrap_err(),
        libc::EINVAL,
        "an ACL without owner, group and other entries"
    );
    let acl =
        acl::bytes(&[(1, 6, u32::MAX), (2, 4, 65534), (4, 4, u32::MAX), (0x10, 4, u32::MAX), (0x20, 4, u32::MAX)]);
    fs.setxattr(f.ino, "system.posix_acl_access", &acl, 0).await.unwrap();
    assert_eq!(fs.getxattr(f.ino, "user.a").await.unwrap(), b"2");
    let mut names = fs.listxattr(f.ino).await.unwrap();
    names.sort();
    assert_eq!(names, [b"system.posix_acl_access".to_vec(), b"user.a".to_vec()]);
    fs.removexattr(f.ino, "user.a").await.unwrap();
    assert_eq!(fs.removexattr(f.ino, "user.a").await.unwrap_err(), libc::ENODATA);
    assert_eq!(fs.setxattr(f.ino, "user.big", &vec![0; 65537], 0).await.unwrap_err(), libc::E2BIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_map_commits_refuse_stale_versions_and_only_truncate_shrinks() {
    let (_srv, fs) = setup().await;
    let bs = 4 * 1024 * 1024u64;
    let (f, _) = fs.create_open("f", true).await.unwrap();
    let a = fs.write_block(f.ino, 0, 0, 4096, 4096, false).await.unwrap();
    assert_eq!((a.size, a.stored), (4096, 4096));
    let v1 = fs.blocks(f.ino).await.unwrap()[0].version;
    // A second writer that built on version 0 is refused and nothing changes.
    assert_eq!(fs.write_block(f.ino, 0, 0, 10, 10, false).await.unwrap_err(), libc::ESTALE);
    assert_eq!(fs.blocks(f.ino).await.unwrap()[0].version, v1);
    // A write below the end does not lower the size; a write further out raises it.
    let a = fs.write_block(f.ino, 0, v1, 100, 100, false).await.unwrap();
    assert_eq!(a.size, 4096, "size is max(old, end)");
    let a = fs.write_block(f.ino, 2, 0, 10, 2 * bs + 10, false).await.unwrap();
    assert_eq!(a.size, 2 * bs + 10);
    assert_eq!(
        fs.blocks(f.ino).await.unwrap().iter().map(|b| b.index).collect::<Vec<_>>(),
        [0, 2],
        "index 1 is a hole"
    );
    // Truncate into block 0 drops block 2 and shortens block 0's valid length.
    let a = fs.setattr(f.ino, |r| r.size = Some(50)).await.unwrap();
    assert_eq!((a.size, a.stored), (50, 50));
    let b = fs.blocks(f.ino).await.unwrap();
    assert_eq!((b.len(), b[0].len), (1, 50));
    // A block id that was never allocated cannot be referenced.
    let err = fs
        .commit(
            f.ino,
            vec![pb::BlockChange { index: 5, base_version: 0, block: Some(crate::fs::block(999_999, 1)) }],
            1,
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(err, libc::EINVAL);
    // A block whose chunk table cannot hold its bytes is refused; a consistent one is taken.
    let ids = fs.rpc().allocate_blocks(pb::AllocateBlocksRequest { ctx: fs.ctx(), count: 2 }).await.unwrap();
    let ids = ids.into_inner().ids;
    for (id, chunks, want) in [(ids[0], 1, Err(libc::EINVAL)), (ids[1], 2, Ok(()))] {
        let b = pb::BlockRef { chunk_size: 65536, chunks, ..crate::fs::block(id, 65537) };
        let got = fs.commit(f.ino, vec![pb::BlockChange { index: 7, base_version: 0, block: Some(b) }], 0, false).await;
        assert_eq!(got.map(|_| ()), want, "{chunks} chunks of 64 KiB for 65537 bytes");
        if want.is_ok() {
            let map = fs.blocks(f.ino).await.unwrap();
            assert_eq!(map.iter().find(|b| b.index == 7).map(|b| b.chunks), Some(2), "the block map keeps the chunks");
        }
    }
}

/// With FUSE_POSIX_ACL the kernel enforces ACLs and leaves their bond with the mode to the
/// filesystem: the server keeps them in step in the same transaction, as ext4 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_and_the_mode_stay_in_step() {
    let (_srv, fs) = setup().await;
    let nobody = |perm| (2u16, perm, 65534u32);
    let base = |u: u16, g: u16, o: u16| vec![(1u16, u, u32::MAX), (4, g, u32::MAX), (0x20, o, u32::MAX)];
    let get = |ino| {
        let fs = &fs;
        async move { fs.getxattr(ino, "system.posix_acl_access").await.map(|v| acl::entries(&v).unwrap()) }
    };

    // setfacl -m u:nobody:rw on a 0644 file: the mask rw- becomes the group class.
    let f = fs.create("f").await.unwrap();
    let mut e = base(6, 4, 4);
    e.insert(1, nobody(6));
    e.push((0x10, 6, u32::MAX));
    fs.setxattr(f.ino, "system.posix_acl_access", &acl::bytes(&e), 0).await.unwrap();
    assert_eq!(fs.getattr(f.ino).await.unwrap().perm & 0o777, 0o664);

    // chmod 640: the mask and the other entry follow, the named entry stays (its effective
    // permission is now r--, as getfacl shows on ext4).
    fs.setattr(f.ino, |r| r.perm = Some(0o640)).await.unwrap();
    let after = get(f.ino).await.unwrap();
    assert!(after.contains(&(0x10, 4, u32::MAX)), "mask after chmod 640: {after:?}");
    assert!(after.contains(&(0x20, 0, u32::MAX)), "other after chmod 640: {after:?}");
    assert!(after.contains(&(1, 6, u32::MAX)) && after.contains(&nobody(6)), "{after:?}");

    // The kernel asks that an ACL set by a caller outside the file's group clear setgid; otherwise
    // it stays.
    fs.setattr(f.ino, |r| r.perm = Some(0o2664)).await.unwrap();
    fs.setxattr(f.ino, "system.posix_acl_access", &acl::bytes(&e), 0).await.unwrap();
    assert_eq!(fs.getattr(f.ino).await.unwrap().perm & 0o7777, 0o2664);
    let req = pb::SetXattrRequest {
        ctx: fs.ctx(),
        ino: f.ino,
        name: b"system.posix_acl_access".to_vec(),
        value: acl::bytes(&e),
        flags: 0,
        acl_kill_sgid: true,
    };
    fs.rpc().set_xattr(req).await.unwrap();
    assert_eq!(fs.getattr(f.ino).await.unwrap().perm & 0o7777, 0o0664);
    // An ACL that says no more than a mode is kept as the mode alone.
    fs.setxattr(f.ino, "system.posix_acl_access", &acl::bytes(&base(7, 5, 0)), 0).await.unwrap();
    assert_eq!(fs.getattr(f.ino).await.unwrap().perm & 0o777, 0o750);
    assert_eq!(get(f.ino).await.unwrap_err(), libc::ENODATA);

    // A default ACL: new files get it limited by their create mode, and the umask does not apply;
    // new directories also get the default ACL itself; symlinks get nothing.
    let d = fs.mkdir("d").await.unwrap();
    let mut dacl = base(7, 5, 5);
    dacl.insert(1, nobody(7));
    dacl.push((0x10, 7, u32::MAX));
    fs.setxattr(d.ino, "system.posix_acl_default", &acl::bytes(&dacl), 0).await.unwrap();
    let new = create_0666_with_umask_077(&fs, "d/new").await;
    assert_eq!(new.perm & 0o777, 0o664, "the umask 077 must not apply under a default ACL");
    let inherited = get(new.ino).await.unwrap();
    assert!(inherited.contains(&nobody(7)) && inherited.contains(&(0x10, 6, u32::MAX)), "{inherited:?}");
    let sub = fs.mkdir("d/sub").await.unwrap();
    assert_eq!(sub.perm & 0o777, 0o755);
    assert_eq!(fs.getxattr(sub.ino, "system.posix_acl_default").await.unwrap(), acl::bytes(&dacl));
    assert!(get(sub.ino).await.unwrap().contains(&nobody(7)));
    let link = fs.symlink("d/link", "new").await.unwrap();
    assert_eq!(link.perm & 0o777, 0o777);
    // Without a default ACL the umask applies as before.
    assert_eq!(create_0666_with_umask_077(&fs, "plain").await.perm & 0o777, 0o600);
}

async fn create_0666_with_umask_077(fs: &crate::fs::Fs, path: &str) -> pb::Attr {
    let (parent, name) = fs.parent(path).await.unwrap();
    let req = pb::MkNodRequest {
        ctx: fs.ctx(),
        parent,
        name,
        kind: pb::FileKind::Regular as i32,
        perm: 0o666,
        umask: 0o077,
        ..Default::default()
    };
    fs.rpc().mk_nod(req).await.unwrap().into_inner().attr.unwrap()
}
