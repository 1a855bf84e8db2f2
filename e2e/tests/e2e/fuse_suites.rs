//! The third-party suites on a real stratusfs mount: pjdfstest (POSIX) and fsx (random I/O checked
//! against a model), on volumes with the smallest block size so files cross many blocks.

use std::time::Instant;

use e2e::stores::{Backend, Store};
use e2e::stratusfs::{MetaServer, Mount, install_mount_helpers};
use fs_core::admin::Compression;

/// The smallest block size: fsx's files (up to 1 MiB) cross several blocks.
const SMALL_BLOCKS: u32 = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pjdfstest_passes_on_a_mount() {
    e2e::init();
    // pjdfstest's EROFS cases remount the mount read-only and back through mount(8).
    install_mount_helpers().unwrap();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    pjdfstest_passes(&m).await;
}

/// pjdfstest on an encrypted volume (names up to its 255-byte limit are sealed, each name's
/// ciphertext 16 bytes longer), and one fsx seed over blocks that are compressed, then sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pjdfstest_and_fsx_pass_on_an_encrypted_volume() {
    e2e::init();
    install_mount_helpers().unwrap();
    let meta = MetaServer::start_in(std::path::Path::new("/dev/shm"), &[]).await.unwrap();
    let secret = meta.dir().join("secret");
    std::fs::write(&secret, "pjdfstest and fsx").unwrap();
    let token = meta
        .volume("v", |r| {
            r.block_size = Some(SMALL_BLOCKS);
            r.encryption = Some(fs_core::crypto::Secret::new(b"pjdfstest and fsx".to_vec()).unwrap());
        })
        .await
        .unwrap();
    let option = format!("encryption_secret_file={}", secret.display());
    let m = Mount::start(&meta, "v", &token, &[&option]).await.unwrap();
    pjdfstest_passes(&m).await;
    let ops = 20_000;
    let artifacts = tempfile::tempdir().unwrap();
    let (file, a) = (m.path.join("fsx"), artifacts.path().to_path_buf());
    let start = Instant::now();
    let run =
        tokio::task::spawn_blocking(move || e2e::suites::fsx(&file, FSX_STRATUSFS, ops, 1, &a).unwrap()).await.unwrap();
    eprintln!("fsx seed 1 on an encrypted volume: {ops} operations in {:?}", start.elapsed());
    assert!(run.ok, "fsx on an encrypted volume failed:\n{}\nmount log:\n{}", run.output, m.log_tail(40));
}

/// pjdfstest's whole suite on mount `m`: no failure; the only skips are the EROFS cases (run on
/// their own) and LINK_MAX, which FUSE does not report.
async fn pjdfstest_passes(m: &Mount) {
    let dir = m.path.join("pjd");
    std::fs::create_dir(&dir).unwrap();
    let other = tempfile::tempdir_in("/dev/shm").unwrap();
    let (d, o) = (dir.clone(), other.path().to_path_buf());
    let main =
        tokio::task::spawn_blocking(move || e2e::suites::pjdfstest(&d, Some(&o), &[], false).unwrap()).await.unwrap();
    eprintln!("pjdfstest on a stratusfs mount: {}", main.line());
    assert_eq!(main.failed, 0, "failures: {:?}\n{}", main.failures(), main.output);
    // The EROFS cases run on their own: one case (posix_fallocate::affected_only_create_flags)
    // leaks a descriptor open for writing, after which no read-only remount can succeed on any
    // filesystem, so they cannot share a pjdfstest process with the rest.
    let d = dir.clone();
    let erofs =
        tokio::task::spawn_blocking(move || e2e::suites::pjdfstest(&d, None, &["erofs"], true).unwrap()).await.unwrap();
    eprintln!("pjdfstest EROFS cases (remounting the mount read-only): {}", erofs.line());
    assert_eq!(erofs.failed, 0, "failures: {:?}\n{}", erofs.failures(), erofs.output);
    assert_eq!(erofs.skipped, 0, "{}", erofs.output);
    // Every skip of the main run is either an EROFS case (run above) or pjdfstest finding no
    // LINK_MAX (FUSE reports none: pathconf(_PC_LINK_MAX) is unknown).
    let remounts = main.output.matches("Remounts (allow_remount) are not allowed").count() as u32;
    let link_max = main.output.matches("Cannot get value for LINK_MAX").count() as u32;
    assert_eq!(remounts, erofs.passed, "{}", main.output);
    assert_eq!(main.skipped, remounts + link_max, "{}", main.output);
}

/// fsx on stratusfs: every operation it has that Linux filesystems support (shared mmap writes,
/// truncate, fsync, posix_fallocate, hole punching, copy_file_range), over a 1 MiB file.
pub const FSX_STRATUSFS: &str = r#"
flen = 1048576
[opsize]
max = 131072
[weights]
close_open = 1
read = 10
write = 10
mapread = 5
mapwrite = 5
invalidate = 1
truncate = 2
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 1
copy_file_range = 1
"#;

/// Operations per fsx seed in this tier (the soak tier runs 1,000,000).
fn fsx_ops() -> u64 {
    std::env::var("STRATUSFS_FSX_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// The fsx seeds of the multi-seed run (`STRATUSFS_FSX_SEEDS=3` reruns one that failed).
fn fsx_seeds() -> Vec<u64> {
    std::env::var("STRATUSFS_FSX_SEEDS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsx_passes_on_a_mount_with_files_across_blocks() {
    e2e::init();
    // fsx fsyncs often and is about semantics: the server's data lives in memory (tmpfs).
    // A minute of history and frequent GC: the soak tier's 1,000,000 operations per seed otherwise leave
    // every replaced block in tmpfs for the default 7-day retention (23 GB, the machine's memory).
    let meta = MetaServer::start_in(std::path::Path::new("/dev/shm"), &["--gc-interval-secs", "5"]).await.unwrap();
    let token = meta
        .volume("v", |r| {
            r.block_size = Some(SMALL_BLOCKS);
            r.retention_secs = Some(60);
        })
        .await
        .unwrap();
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let ops = fsx_ops();
    for seed in fsx_seeds() {
        let artifacts = tempfile::tempdir().unwrap();
        let file = m.path.join(format!("fsx-{seed}"));
        let start = Instant::now();
        let a = artifacts.path().to_path_buf();
        let run = tokio::task::spawn_blocking(move || e2e::suites::fsx(&file, FSX_STRATUSFS, ops, seed, &a).unwrap())
            .await
            .unwrap();
        eprintln!("fsx seed {seed}: {ops} operations in {:?}", start.elapsed());
        assert!(run.ok, "fsx seed {seed} failed:\n{}\nmount log:\n{}", run.output, m.log_tail(40));
    }
}

on_each_backend!(cloud: backend_fsx_one_seed);

/// One fsx seed on a volume whose blocks live in a cloud store's emulator: 20,000 operations in
/// the test tier, `STRATUSFS_BACKEND_FSX_OPS` more (`e2e/soak` runs 100,000).
async fn backend_fsx_one_seed(backend: Backend) {
    let store = Store::start(backend).await.unwrap();
    let meta = MetaServer::start_in(std::path::Path::new("/dev/shm"), &["--gc-interval-secs", "5"]).await.unwrap();
    let token = meta
        .volume_on("v", store.spec("v"), |r| {
            r.block_size = Some(SMALL_BLOCKS);
            r.retention_secs = Some(60);
        })
        .await
        .unwrap();
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let ops = std::env::var("STRATUSFS_BACKEND_FSX_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let artifacts = tempfile::tempdir().unwrap();
    let (file, a) = (m.path.join("fsx"), artifacts.path().to_path_buf());
    let start = Instant::now();
    let run =
        tokio::task::spawn_blocking(move || e2e::suites::fsx(&file, FSX_STRATUSFS, ops, 1, &a).unwrap()).await.unwrap();
    eprintln!("fsx seed 1 on {backend:?}: {ops} operations in {:?}", start.elapsed());
    assert!(run.ok, "fsx on {backend:?} failed:\n{}\nmount log:\n{}", run.output, m.log_tail(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsx_closing_every_10000_ops_is_seen_whole_by_a_second_mount() {
    e2e::init();
    // fsx fsyncs often and is about semantics: the server's data lives in memory (tmpfs).
    let meta = MetaServer::start_in(std::path::Path::new("/dev/shm"), &[]).await.unwrap();
    let token = meta.volume("v", |r| r.block_size = Some(SMALL_BLOCKS)).await.unwrap();
    let writer = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let reader = Mount::start(&meta, "v", &token, &["attr_ttl=60"]).await.unwrap();
    // No close_open inside a segment: fsx keeps the file open for 10,000 operations, and its
    // exit closes it; then the other mount opens the file and compares it with fsx's good copy.
    // fsx is deterministic for a seed, so the good copy is the same run on a local file.
    let config = FSX_STRATUSFS.replace("close_open = 1", "close_open = 0");
    let segments = (fsx_ops() / 10_000).max(1);
    for seg in 0..segments {
        let artifacts = tempfile::tempdir().unwrap();
        let local = artifacts.path().join("good");
        let (a, c, file) = (artifacts.path().to_path_buf(), config.clone(), writer.path.join("shared"));
        let (run, good) = tokio::task::spawn_blocking(move || {
            (
                e2e::suites::fsx(&file, &c, 10_000, 100 + seg, &a).unwrap(),
                e2e::suites::fsx(&local, &c, 10_000, 100 + seg, &a).unwrap(),
            )
        })
        .await
        .unwrap();
        assert!(run.ok, "fsx segment {seg} failed:\n{}", run.output);
        assert!(good.ok, "fsx segment {seg} on a local file failed:\n{}", good.output);
        let good = std::fs::read(artifacts.path().join("good")).unwrap();
        let seen = std::fs::read(reader.path.join("shared")).unwrap();
        assert_eq!(seen.len(), good.len(), "segment {seg}: the second mount sees another size");
        let first_diff = seen.iter().zip(&good).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "segment {seg}: the second mount sees other bytes");
    }
    eprintln!("{segments} fsx segments of 10,000 operations, each seen whole by the second mount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_without_compression_and_one_with_zstd_keep_bytes() {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    for (name, kind) in [("plain", Compression::None), ("zstd", Compression::Zstd)] {
        let token = meta
            .volume(name, |r| {
                r.block_size = Some(SMALL_BLOCKS);
                r.compression = kind;
            })
            .await
            .unwrap();
        let m = Mount::start(&meta, name, &token, &[]).await.unwrap();
        let artifacts = tempfile::tempdir().unwrap();
        let (file, a) = (m.path.join("f"), artifacts.path().to_path_buf());
        let run = tokio::task::spawn_blocking(move || e2e::suites::fsx(&file, FSX_STRATUSFS, 10_000, 7, &a).unwrap())
            .await
            .unwrap();
        assert!(run.ok, "fsx on the {name} volume failed:\n{}", run.output);
    }
}
