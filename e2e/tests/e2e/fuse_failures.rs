//! What a mount does when things go wrong: a full quota, a crashed client or metadata server, a
//! corrupted block object, a read-only mount or token.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::stores::{Backend, Store};
use e2e::stratusfs::{MetaServer, Mount, install_mount_helpers, is_mounted};
use fs_core::admin::Quota;
use fs_core::blockstore::open_backend;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

on_each_backend!(
    a_full_quota_fails_write_with_edquot_and_keeps_every_earlier_byte,
    fsynced_data_survives_kill_9_of_the_client_and_of_the_metadata_server,
    a_corrupted_block_object_reads_as_eio_never_as_wrong_bytes,
);

const MIB: usize = 1 << 20;

/// Byte `i` of the test pattern of file `seed`.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(2654435761).wrapping_add(seed as u64).to_le_bytes()[1]).collect()
}

async fn a_full_quota_fails_write_with_edquot_and_keeps_every_earlier_byte(backend: Backend) {
    let store = Store::start(backend).await.unwrap();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta
        .volume_on("v", store.spec("v"), |r| {
            r.block_size = Some(256 * 1024);
            r.quota = Quota { bytes: 10 * MIB as u64, inodes: 0 };
        })
        .await
        .unwrap();
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let data = pattern(1, 16 * MIB);
    let path = m.path.join("big");
    let p = path.clone();
    let d = data.clone();
    // write(2) in 100,000-byte pieces until it fails.
    let (written, err) = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::create(&p).unwrap();
        let mut written = 0;
        for chunk in d.chunks(100_000) {
            match f.write(chunk) {
                Ok(n) => written += n,
                Err(e) => return (written, e),
            }
        }
        panic!("16 MiB fit in a 10 MiB quota");
    })
    .await
    .unwrap();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "write failed with {err}");
    eprintln!("write(2) returned EDQUOT after {written} bytes (quota 10 MiB)");
    assert!(written >= 9 * MIB, "only {written} bytes fit in 10 MiB");
    // Every byte write(2) accepted is there, through a fresh open.
    let back = std::fs::read(&path).unwrap();
    assert_eq!(back.len(), written);
    assert!(back == data[..written], "bytes accepted before EDQUOT read back differently");
    // A second file gets EDQUOT at once; deleting the first makes room again.
    let err = std::fs::write(m.path.join("more"), vec![1u8; MIB]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    std::fs::remove_file(&path).unwrap();
    std::fs::write(m.path.join("more"), vec![1u8; MIB]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_quota_binds_writes_inside_it() {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |r| r.block_size = Some(256 * 1024)).await.unwrap();
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    std::fs::create_dir(m.path.join("team")).unwrap();
    let mut admin = meta.admin().await.unwrap();
    admin.set_quota("v", "/team", Quota { bytes: 2 * MIB as u64, inodes: 0 }).await.unwrap();
    let err = std::fs::write(m.path.join("team/f"), vec![7u8; 3 * MIB]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    // statfs inside the directory reports its quota as the size.
    let st = nix::sys::statvfs::statvfs(&m.path.join("team")).unwrap();
    assert_eq!(st.blocks() * st.fragment_size(), 2 * MIB as u64);
    // Outside the directory there is room.
    std::fs::write(m.path.join("outside"), vec![7u8; 3 * MIB]).unwrap();
}

/// Runs `fsprobe writer` on `path` until it has reported `n` fsynced records; returns the
/// process (still writing) and the reader of its reports.
fn start_writer(path: &std::path::Path, record: usize) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fsprobe"))
        .args(["writer", &path.to_string_lossy(), &record.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// Reads reports until `n` records are synced; returns the last count seen.
fn wait_synced(out: &mut BufReader<std::process::ChildStdout>, n: u64) -> u64 {
    let mut last = 0;
    let mut line = String::new();
    while last < n {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        last = line.trim().strip_prefix("synced ").and_then(|v| v.parse().ok()).unwrap_or(last);
    }
    last
}

/// Checks that the first `synced` records of the writer's file are intact.
fn check_records(path: &std::path::Path, record: usize, synced: u64) {
    let data = std::fs::read(path).unwrap();
    assert!(data.len() as u64 >= synced * record as u64, "{} bytes, {synced} records were fsynced", data.len());
    for i in 0..synced as usize {
        let rec = &data[i * record..(i + 1) * record];
        assert!(rec.iter().all(|&b| b == (i % 251) as u8), "record {i} (fsynced) is damaged");
    }
}

async fn fsynced_data_survives_kill_9_of_the_client_and_of_the_metadata_server(backend: Backend) {
    let store = Store::start(backend).await.unwrap();
    const RECORD: usize = 40_000;
    let mut meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume_on("v", store.spec("v"), |r| r.block_size = Some(256 * 1024)).await.unwrap();

    // The client dies mid-write.
    let mut m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let file = m.path.join("client-crash");
    let (mut writer, mut out) = start_writer(&file, RECORD);
    let synced = tokio::task::spawn_blocking(move || {
        let n = wait_synced(&mut out, 30);
        (n, out)
    })
    .await
    .unwrap();
    m.kill9();
    let _ = writer.kill();
    let _ = writer.wait();
    // Reports printed after the kill may have been read too: count them all.
    let (mut synced, mut out) = synced;
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    synced = rest.lines().filter_map(|l| l.strip_prefix("synced ")?.parse().ok()).fold(synced, u64::max);
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    check_records(&m.path.join("client-crash"), RECORD, synced);
    eprintln!("client kill -9: {synced} fsynced records intact");

    // The metadata server dies mid-write; the mount reconnects by itself when it is back.
    let file = m.path.join("server-crash");
    let (mut writer, mut out) = start_writer(&file, RECORD);
    let (synced, _out) = tokio::task::spawn_blocking(move || {
        let n = wait_synced(&mut out, 30);
        (n, out)
    })
    .await
    .unwrap();
    meta.kill9();
    let _ = writer.kill();
    // The killed writer's exit closes its file, and that close waits for the server (up to
    // meta_wait for each request): restart the server before reaping it.
    meta.restart().await.unwrap();
    let _ = tokio::task::spawn_blocking(move || writer.wait()).await;
    // The same mount, without remounting, once its session is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    let path = m.path.join("server-crash");
    loop {
        match std::fs::read(&path) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the mount to reconnect: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the mount did not come back after the server restart: {e}\n{}", m.log_tail(30)),
        }
    }
    check_records(&path, RECORD, synced);
    eprintln!("metadata server kill -9: {synced} fsynced records intact, read through the same mount");
}

/// A metadata server restart (a new pod, an upgrade) is a pause for the mount's users, not an
/// error: requests wait for the server within `meta_wait` and are sent once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_a_restarting_metadata_server_instead_of_failing() {
    e2e::init();
    let mut meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let impatient = Mount::start(&meta, "v", &token, &["meta_wait=0"]).await.unwrap();
    std::fs::write(m.path.join("before"), b"written before the restart").unwrap();
    // fsync of a directory makes everything this session did durable, its own record too (a
    // session younger than the server's flush interval would not survive kill -9).
    std::fs::File::open(&m.path).unwrap().sync_all().unwrap();
    meta.kill9();

    // mkdir always goes to the server.
    let dir = m.path.join("made-while-down");
    let mkdir = tokio::task::spawn_blocking(move || std::fs::create_dir(&dir));
    let err = std::fs::create_dir(impatient.path.join("impatient")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "with meta_wait=0 a request fails at once: {err}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    if mkdir.is_finished() {
        panic!("mkdir returned while the server was down: {:?}\n{}", mkdir.await, m.log_tail(20));
    }
    meta.restart().await.unwrap();
    let r =
        tokio::time::timeout(Duration::from_secs(30), mkdir).await.expect("mkdir still waiting 30 s after the restart");
    r.unwrap().unwrap_or_else(|e| panic!("mkdir failed although the server came back: {e}\n{}", m.log_tail(20)));
    assert!(m.path.join("made-while-down").is_dir());
    assert_eq!(std::fs::read(m.path.join("before")).unwrap(), b"written before the restart");
    let log = m.log_tail(200);
    assert!(log.contains("cannot be reached") && log.contains("reachable again"), "{log}");
}

async fn a_corrupted_block_object_reads_as_eio_never_as_wrong_bytes(backend: Backend) {
    let store = Store::start(backend).await.unwrap();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume_on("v", store.spec("v"), |r| r.block_size = Some(256 * 1024)).await.unwrap();
    let mut m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let data = pattern(3, 600 * 1024);
    std::fs::write(m.path.join("f"), &data).unwrap();
    m.stop();
    // The block objects in block order (ids are allocated in ascending order, keys end in the
    // id), read and rewritten through the store's own API.
    let objects = open_backend(&store.spec("v")).unwrap();
    let mut keys: Vec<ObjectPath> = objects.list(None).map_ok(|o| o.location).try_collect().await.unwrap();
    keys.sort_by_key(|p| p.filename().unwrap_or_default().to_string());
    assert_eq!(keys.len(), 3, "600 KiB in 256 KiB blocks: {keys:?}");
    // Block 0: a byte of its chunk table (the object's first bytes). Block 1: a byte of its last
    // chunk. Block 2 stays whole.
    for (key, from_end) in [(&keys[0], false), (&keys[1], true)] {
        let mut b = objects.get(key).await.unwrap().bytes().await.unwrap().to_vec();
        let i = if from_end { b.len() - 100 } else { 10 };
        b[i] ^= 0x40;
        objects.put(key, b.into()).await.unwrap();
    }
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let f = std::fs::File::open(m.path.join("f")).unwrap();
    let pread = |at: usize| {
        let mut buf = vec![0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, at as u64).map(|_| buf)
    };
    assert_eq!(pread(512 * 1024).unwrap(), data[512 * 1024..516 * 1024], "the intact block reads back");
    let err = std::fs::read(m.path.join("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    for at in [0, 500 * 1024] {
        let err = pread(at).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "read at {at}: {err}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(m.log_tail(50).contains("failed its check"), "no log line names the bad block:\n{}", m.log_tail(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mounts_and_tokens_refuse_changes_with_erofs() {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let rw = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    std::fs::write(rw.path.join("f"), b"data").unwrap();
    let ro_token = meta.token("v", |t| t.read_only = true).await.unwrap();
    for (what, m) in [
        ("the ro option", Mount::start(&meta, "v", &token, &["ro"]).await.unwrap()),
        ("a read-only token", Mount::start(&meta, "v", &ro_token, &[]).await.unwrap()),
    ] {
        assert_eq!(std::fs::read(m.path.join("f")).unwrap(), b"data", "{what}");
        for err in [
            std::fs::write(m.path.join("f"), b"x").unwrap_err(),
            std::fs::write(m.path.join("new"), b"x").unwrap_err(),
            std::fs::create_dir(m.path.join("d")).unwrap_err(),
            std::fs::remove_file(m.path.join("f")).unwrap_err(),
        ] {
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{what}: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_8_and_fstab_style_mounts_detach_and_unmount() {
    e2e::init();
    install_mount_helpers().unwrap();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let token_file = meta.token_file(&token).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let log = dir.path().join("mount.log");
    for fstype in ["stratusfs", "fuse.stratusfs"] {
        let opts = format!(
            "token_file={},fingerprint={},log_file={},noatime",
            token_file.display(),
            meta.fingerprint,
            log.display()
        );
        let out = Command::new("mount")
            .args(["-t", fstype, &format!("stratusfs://{}/v", meta.addr)])
            .arg(&mnt)
            .args(["-o", &opts])
            .output()
            .unwrap();
        assert!(out.status.success(), "mount -t {fstype}: {}", String::from_utf8_lossy(&out.stderr));
        // mount(8) returned: the filesystem is there, served by a detached process.
        assert!(is_mounted(&mnt));
        std::fs::write(mnt.join(fstype), b"x").unwrap();
        let st = Command::new("umount").arg(&mnt).status().unwrap();
        assert!(st.success());
        assert!(!is_mounted(&mnt));
    }
    // A bad option is refused before anything is mounted, with a message naming it.
    let out = Command::new("mount")
        .args(["-t", "stratusfs", &format!("stratusfs://{}/v", meta.addr)])
        .arg(&mnt)
        .args(["-o", &format!("token_file={},colour=blue", token_file.display())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("colour"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!is_mounted(&mnt));
    // A wrong token is refused with EACCES's message, nothing mounted.
    let bad = meta.token_file("00000000-0000-4000-8000-000000000000").unwrap();
    let out = Command::new("mount")
        .args(["-t", "stratusfs", &format!("stratusfs://{}/v", meta.addr)])
        .arg(&mnt)
        .args(["-o", &format!("token_file={},fingerprint={}", bad.display(), meta.fingerprint)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("token"), "{msg}");
    assert!(!is_mounted(&mnt));
    let _ = std::io::stderr().flush();
}
