//! Directory delegations (docs/write-back-metadata.md) as other mounts see them: a mount that
//! creates files in a burst holds the directory and creates them without asking the server; any
//! other mount's look at the directory recalls it first, so close-to-open, O_EXCL and names hold
//! as without delegations, and a holder killed with -9 loses only what it never fsynced.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use e2e::stratusfs::{MetaServer, Mount};

async fn delegations(meta: &MetaServer, event: &str) -> f64 {
    let key = format!("stratusfs_meta_delegations{{volume=\"v\",event=\"{event}\"}} ");
    let text = meta.metrics().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_created_under_a_delegation_are_there_for_another_mount_at_once() {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let a = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let b = Mount::start(&meta, "v", &token, &["attr_ttl=60", "entry_ttl=60"]).await.unwrap();
    std::fs::create_dir(a.path.join("d")).unwrap();
    // B has looked at the empty directory (and may cache that for 60 s: only open and readdir
    // revalidate, as without delegations).
    assert!(names(&b.path.join("d")).is_empty());
    // A burst of creates: A holds "d" from its second create on.
    for i in 0..100 {
        std::fs::write(a.path.join(format!("d/f{i:03}")), format!("content of file {i}")).unwrap();
    }
    // Temporary files created and removed under the delegation never reach the server.
    for i in 0..100 {
        let p = a.path.join(format!("d/tmp{i}"));
        std::fs::write(&p, b"scratch").unwrap();
        std::fs::remove_file(&p).unwrap();
    }
    assert!(delegations(&meta, "granted").await >= 1.0, "A was not granted the directory");
    // At once (A still holds it): B's readdir recalls the delegation; everything A closed is there.
    let expect: Vec<String> = (0..100).map(|i| format!("f{i:03}")).collect();
    assert_eq!(names(&b.path.join("d")), expect, "B's listing right after A's creates");
    for i in 0..100 {
        let got = std::fs::read_to_string(b.path.join(format!("d/f{i:03}"))).unwrap();
        assert_eq!(got, format!("content of file {i}"), "file {i} as B reads it");
    }
    assert!(delegations(&meta, "recalled").await >= 1.0, "B's readdir did not recall A's delegation");
    assert_eq!(delegations(&meta, "revoked").await, 0.0, "A did not give the delegation back in time");
    // And A sees what B does afterwards.
    std::fs::write(b.path.join("d/from-b"), b"B was here").unwrap();
    assert_eq!(std::fs::read(a.path.join("d/from-b")).unwrap(), b"B was here");
    // Sizes and owners as A saw them when it created the files.
    let ma = std::fs::metadata(a.path.join("d/f042")).unwrap();
    let mb = std::fs::metadata(b.path.join("d/f042")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((ma.len(), ma.uid(), ma.gid(), ma.mode()), (mb.len(), mb.uid(), mb.gid(), mb.mode()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o_excl_and_names_agree_between_a_holder_and_another_mount() {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let a = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let b = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    std::fs::create_dir(a.path.join("d")).unwrap();
    for i in 0..10 {
        std::fs::write(a.path.join(format!("d/f{i}")), b"a").unwrap();
    }
    // f5 exists although A has not told the server yet: B's O_EXCL create fails.
    let excl = |p: std::path::PathBuf| std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(p);
    let e = excl(b.path.join("d/f5")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "B's O_EXCL create of a name A created: {e}");
    // A name only B made: A's O_EXCL create of it fails, A sees it.
    excl(b.path.join("d/only-b")).unwrap().write_all(b"b").unwrap();
    let e = excl(a.path.join("d/only-b")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "A's O_EXCL create of a name B created: {e}");
    assert_eq!(std::fs::read(a.path.join("d/only-b")).unwrap(), b"b");
    // A creates again (a new burst, maybe a new delegation); B unlinks one of A's files and
    // renames another; both mounts agree on the result.
    for i in 10..20 {
        std::fs::write(a.path.join(format!("d/f{i}")), b"a").unwrap();
    }
    std::fs::remove_file(b.path.join("d/f15")).unwrap();
    std::fs::rename(b.path.join("d/f16"), b.path.join("d/renamed")).unwrap();
    let e = excl(a.path.join("d/renamed")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    let expect: Vec<String> = {
        let mut v: Vec<String> = (0..20).filter(|i| *i != 15 && *i != 16).map(|i| format!("f{i}")).collect();
        v.extend(["only-b".to_string(), "renamed".to_string()]);
        v.sort();
        v
    };
    assert_eq!(names(&a.path.join("d")), expect, "A's listing");
    assert_eq!(names(&b.path.join("d")), expect, "B's listing");
    assert!(delegations(&meta, "recalled").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_with_9_keeps_what_it_fsynced_and_others_go_on() {
    e2e::init();
    let meta = MetaServer::start(&["--lease-secs", "3"]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let mut a = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let b = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    std::fs::create_dir(a.path.join("d")).unwrap();
    for i in 0..20 {
        std::fs::write(a.path.join(format!("d/f{i}")), b"unsynced").unwrap();
    }
    let mut f = std::fs::File::create(a.path.join("d/synced")).unwrap();
    f.write_all(b"fsynced bytes").unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::write(a.path.join("d/last"), b"never fsynced").unwrap();
    assert!(delegations(&meta, "granted").await >= 1.0, "A was not granted the directory");
    a.kill9();
    // B's look at the directory recalls a delegation whose holder is gone: it goes on once the
    // server revoked it (the holder's stream closed) or its session's lease ran out.
    let start = Instant::now();
    let listed = names(&b.path.join("d"));
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(10), "B waited {waited:?} for a dead holder");
    assert!(listed.contains(&"synced".to_string()), "the fsynced file is gone: {listed:?}");
    assert_eq!(std::fs::read(b.path.join("d/synced")).unwrap(), b"fsynced bytes");
    // Files A never fsynced may be there or not; those there are whole or empty, never wrong.
    for n in listed.iter().filter(|n| n.starts_with('f')) {
        let got = std::fs::read(b.path.join("d").join(n)).unwrap();
        assert!(got.is_empty() || got == b"unsynced", "{n} holds {got:?}");
    }
    // B creates in the directory as usual.
    std::fs::write(b.path.join("d/after"), b"b").unwrap();
    assert_eq!(std::fs::read(b.path.join("d/after")).unwrap(), b"b");
    eprintln!("after A's kill -9 B waited {waited:?}; it sees {} names", listed.len());
}
