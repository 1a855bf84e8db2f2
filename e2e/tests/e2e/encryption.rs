//! End-to-end encryption ([6]) through real mounts, on the local folder and on MinIO: what the
//! store and the metadata server's disk hold of an encrypted volume (no plaintext, checked
//! against an unencrypted volume where the same search finds it), two volumes with one secret,
//! a changed or moved object (EIO, never wrong bytes), a wrong or missing secret (the mount
//! fails with a message and nothing changes) and a rekey (the new secret reads everything, no
//! object rewritten). pjdfstest and fsx on an encrypted volume are in `fuse_suites`.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use e2e::stores::{Backend, Store};
use e2e::stratusfs::{MetaServer, Mount, binary, is_mounted};
use fs_core::BackendSpec;
use fs_core::admin::Compression;
use fs_core::crypto::{SEAL_OVERHEAD, Secret};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::store_failures::pattern;

const MIB: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;
/// Plaintexts that must appear nowhere: a directory's name, a symlink's target, a user xattr's value.
const NAME: &str = "quarterly-report-of-the-secret-project";
const TARGET: &str = "/home/alice/the-secret-project/plans.txt";
const VALUE: &str = "the secret project's own xattr value";

fn long_name() -> String {
    format!("{:-<255}", "a-name-at-the-255-byte-limit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_volume_on_a_local_folder() {
    e2e::init();
    encrypted_volume(Backend::Local).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_volume_on_minio() {
    e2e::init();
    encrypted_volume(Backend::Minio).await
}

/// Secret files in a private folder.
struct Secrets(tempfile::TempDir);

impl Secrets {
    fn file(&self, name: &str, secret: &str) -> PathBuf {
        let p = self.0.path().join(name);
        // With the newline `echo` leaves: it is not part of the secret.
        std::fs::write(&p, format!("{secret}\n")).unwrap();
        p
    }
}

fn secret(s: &str) -> Option<Secret> {
    Some(Secret::new(s.as_bytes().to_vec()).unwrap())
}

fn secret_option(file: &Path) -> String {
    format!("encryption_secret_file={}", file.display())
}

async fn encrypted_volume(backend: Backend) {
    let store = Store::start(backend).await.unwrap();
    let meta = MetaServer::start(&[]).await.unwrap();
    let secrets = Secrets(tempfile::tempdir().unwrap());
    let (first, second, wrong) = (
        secrets.file("first", "correct horse battery staple"),
        secrets.file("second", "a new secret after the rekey"),
        secrets.file("wrong", "not the secret"),
    );
    // Compression off: the stored bytes could otherwise be smaller than the file.
    let encrypted = |r: &mut fs_core::admin::VolumeSpec| {
        r.compression = Compression::None;
        r.encryption = secret("correct horse battery staple");
    };
    let v = meta.volume_on("v", store.spec("v"), encrypted).await.unwrap();
    let w = meta.volume_on("w", store.spec("w"), encrypted).await.unwrap();
    let p = meta.volume_on("p", store.spec("p"), |r| r.compression = Compression::None).await.unwrap();
    let data = pattern(7, MIB);
    let with_first = secret_option(&first);
    let with_first = [with_first.as_str()];
    for (volume, token, opts) in [("v", &v, &with_first[..]), ("w", &w, &with_first[..]), ("p", &p, &[][..])] {
        let m = Mount::start(&meta, volume, token, opts).await.unwrap();
        write_tree(&m.path, &data);
        check_tree(&m.path, &data);
    }

    // What the store and the server's disk hold, after unmount (and the server's next durable
    // commit: changes reach the redb file within a second).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (ov, ow, op) =
        (objects(&store.spec("v")).await, objects(&store.spec("w")).await, objects(&store.spec("p")).await);
    let (rv, rp) = (volume_db(&meta, "v").await, volume_db(&meta, "p").await);
    let windows: HashSet<u128> = windows16(&data).collect();
    let has_window = |b: &[u8]| windows16(b).any(|w| windows.contains(&w));
    let long = long_name();
    let secrets_in = |b: &[u8]| -> Vec<&str> {
        [NAME, TARGET, VALUE, &long[..64]].into_iter().filter(|s| contains(b, s.as_bytes())).collect()
    };
    // The search finds the plaintext where it is: the unencrypted volume.
    assert!(op.values().any(|o| has_window(&o.1)), "the file's bytes are not in the unencrypted volume's objects");
    assert_eq!(secrets_in(&rp), vec![NAME, TARGET, VALUE, &long[..64]], "the unencrypted volume's redb file");
    // ... and finds none of it in the encrypted volume.
    for (key, (_, bytes)) in &ov {
        assert!(!has_window(bytes), "a 16-byte window of the file is in object {key}");
        assert!(secrets_in(bytes).is_empty(), "{:?} in object {key}", secrets_in(bytes));
    }
    assert!(!has_window(&rv), "a 16-byte window of the file is in the volume's redb file");
    assert!(secrets_in(&rv).is_empty(), "{:?} in the volume's redb file", secrets_in(&rv));
    let stored: usize = ov.values().map(|o| o.1.len()).sum();
    assert!(stored >= MIB, "{stored} bytes stored for a file of {MIB}");
    eprintln!("encrypted volume: {} objects, {stored} bytes for a {MIB}-byte file; no plaintext found", ov.len());
    // The same file under the same secret in another volume: no 16-byte window in common.
    let of_v: HashSet<u128> = ov.values().flat_map(|o| windows16(&o.1).collect::<Vec<_>>()).collect();
    assert!(!ow.values().any(|o| windows16(&o.1).any(|x| of_v.contains(&x))), "volumes v and w share stored bytes");

    // A missing, wrong or unneeded secret: the mount fails at once, saying so, and changes nothing.
    let msg = mount_fails(&meta, "v", &v, &[]);
    assert!(msg.contains("is encrypted") && msg.contains("encryption_secret_file"), "{msg}");
    let msg = mount_fails(&meta, "v", &v, &[secret_option(&wrong)]);
    assert!(msg.contains("secret is wrong"), "{msg}");
    let msg = mount_fails(&meta, "p", &p, &[secret_option(&first)]);
    assert!(msg.contains("not encrypted"), "{msg}");
    assert_eq!(etags(&store.spec("v")).await, etags_of(&ov), "a failed mount changed objects");
    let mut admin = meta.admin().await.unwrap();
    assert!(admin.usage("v").await.unwrap().sessions.is_empty(), "a failed mount left its session");

    // Rekey: a wrong old secret changes nothing; then the old secret fails, the new one reads
    // everything, and no object was rewritten.
    let rekey = |old: &Path, new: &Path| {
        Command::new(binary().unwrap())
            .args(["admin", "--server", &meta.addr, "--fingerprint", &meta.fingerprint])
            .env("STRATUSFS_ACCOUNT_TOKEN_FILE", meta.dir().join("admin.token"))
            .args(["volume", "rekey", "v", "--old-secret-file"])
            .arg(old)
            .arg("--new-secret-file")
            .arg(new)
            .output()
            .unwrap()
    };
    let out = rekey(&wrong, &second);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("secret is wrong"), "{out:?}");
    let out = rekey(&first, &second);
    assert!(out.status.success(), "{out:?}");
    let msg = mount_fails(&meta, "v", &v, &[secret_option(&first)]);
    assert!(msg.contains("secret is wrong"), "the old secret after a rekey: {msg}");
    // (With an L2 disk cache, which keeps what the store returned: sealed bytes. A local folder's
    // blocks are on disk already: it has none.)
    let l2 = tempfile::tempdir().unwrap();
    {
        let cache = format!("disk_cache_dir={}", l2.path().display());
        let m = Mount::start(&meta, "v", &v, &[&secret_option(&second), &cache]).await.unwrap();
        check_tree(&m.path, &data);
    }
    assert_eq!(etags(&store.spec("v")).await, etags_of(&ov), "a rekey rewrote objects");
    let cached: Vec<_> =
        e2e::files_under(l2.path()).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    if backend != Backend::Local {
        let bytes: usize = cached.iter().map(|(_, b)| b.len()).sum();
        assert!(bytes >= MIB, "L2 holds {bytes} bytes after reading the 1 MiB file");
    }
    for (path, bytes) in &cached {
        assert!(!has_window(bytes), "a 16-byte window of the file is in the L2 file {}", path.display());
    }

    // A flipped byte in a chunk: the reads that touch it fail with EIO, the others read.
    let (key, (_, object)) = ov.iter().max_by_key(|o| o.1.1.len()).map(|(k, o)| (k.clone(), o.clone())).unwrap();
    let table = (MIB / CHUNK) * 32 + SEAL_OVERHEAD;
    let chunk_at = |c: usize| table + c * (CHUNK + SEAL_OVERHEAD);
    assert_eq!(object.len(), chunk_at(MIB / CHUNK), "the 1 MiB file's object: a sealed table and 16 sealed chunks");
    let with_second = secret_option(&second);
    let with_second = [with_second.as_str()];
    let reads = async |changed: Vec<u8>, what: &str| {
        put(&store.spec("v"), &key, changed).await;
        let m = Mount::start(&meta, "v", &v, &with_second).await.unwrap();
        let f = std::fs::File::open(m.path.join("data")).unwrap();
        let mut buf = vec![0u8; 4096];
        let bad = f.read_exact_at(&mut buf, 5 * CHUNK as u64 + 100).unwrap_err();
        assert_eq!(bad.raw_os_error(), Some(libc::EIO), "{what}: reading the changed chunk");
        f.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf == data[..4096], "{what}: chunk 0 read different bytes");
    };
    let mut flipped = object.to_vec();
    flipped[chunk_at(5) + 1000] ^= 0x01;
    reads(flipped, "a flipped byte").await;
    // Chunk 2's sealed bytes copied over chunk 5's place: refused the same way.
    let mut moved = object.to_vec();
    moved.copy_within(chunk_at(2)..chunk_at(3), chunk_at(5));
    reads(moved, "a chunk moved").await;
    // A flipped byte in the chunk table: every read of the file fails.
    let mut table_flip = object.to_vec();
    table_flip[10] ^= 0x01;
    put(&store.spec("v"), &key, table_flip).await;
    {
        let m = Mount::start(&meta, "v", &v, &with_second).await.unwrap();
        let err = std::fs::read(m.path.join("data")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "a changed chunk table");
    }
    // Put back as it was, the file reads whole again.
    put(&store.spec("v"), &key, object.to_vec()).await;
    let m = Mount::start(&meta, "v", &v, &with_second).await.unwrap();
    check_tree(&m.path, &data);
}

/// A file, a directory, a symlink, a user xattr and a name at the 255-byte limit.
fn write_tree(root: &Path, data: &[u8]) {
    std::fs::write(root.join("data"), data).unwrap();
    std::fs::create_dir(root.join(NAME)).unwrap();
    std::fs::write(root.join(NAME).join(long_name()), b"x").unwrap();
    std::os::unix::fs::symlink(TARGET, root.join("link")).unwrap();
    set_xattr(&root.join("data"), "user.note", VALUE.as_bytes());
}

/// What a user reads back of [`write_tree`].
fn check_tree(root: &Path, data: &[u8]) {
    assert!(std::fs::read(root.join("data")).unwrap() == data, "the file read back different bytes");
    let names: Vec<String> =
        std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    for n in ["data", NAME, "link"] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    assert_eq!(std::fs::read(root.join(NAME).join(long_name())).unwrap(), b"x");
    assert_eq!(std::fs::read_link(root.join("link")).unwrap(), Path::new(TARGET));
    assert_eq!(std::fs::symlink_metadata(root.join("link")).unwrap().len(), TARGET.len() as u64, "lstat size");
    let out =
        Command::new("getfattr").args(["--only-values", "-n", "user.note"]).arg(root.join("data")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), VALUE, "{out:?}");
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let (p, n) = (CString::new(path.as_os_str().as_bytes()).unwrap(), CString::new(name).unwrap());
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

/// Mounts `volume` with `-o opts` and expects it to fail; returns what it printed.
fn mount_fails(meta: &MetaServer, volume: &str, token: &str, opts: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let mut cmd = Command::new(binary().unwrap());
    cmd.arg("mount").arg(format!("stratusfs://{}/{volume}", meta.addr)).arg(&mnt).arg("--foreground");
    cmd.arg("--token-file").arg(&token_file).args(["--fingerprint", &meta.fingerprint]);
    if !opts.is_empty() {
        cmd.arg("-o").arg(opts.join(","));
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "the mount of {volume} with {opts:?} succeeded");
    assert!(!is_mounted(&mnt));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every object under a volume's prefix: key → (ETag, bytes).
async fn objects(spec: &BackendSpec) -> BTreeMap<String, (Option<String>, Bytes)> {
    let store = fs_core::blockstore::open_backend(spec).unwrap();
    let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for m in metas {
        let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        out.insert(m.location.to_string(), (m.e_tag, bytes));
    }
    out
}

async fn etags(spec: &BackendSpec) -> BTreeMap<String, Option<String>> {
    etags_of(&objects(spec).await)
}

fn etags_of(objects: &BTreeMap<String, (Option<String>, Bytes)>) -> BTreeMap<String, Option<String>> {
    objects.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()
}

/// Replaces an object (someone with write access to the bucket).
async fn put(spec: &BackendSpec, key: &str, bytes: Vec<u8>) {
    let store = fs_core::blockstore::open_backend(spec).unwrap();
    store.put(&key.into(), bytes.into()).await.unwrap();
}

/// The metadata server's redb file of `volume`.
async fn volume_db(meta: &MetaServer, volume: &str) -> Vec<u8> {
    let uuid = meta.admin().await.unwrap().volume(volume).await.unwrap().unwrap().uuid;
    std::fs::read(meta.dir().join(format!("data/volumes/{uuid}.redb"))).unwrap()
}

fn windows16(b: &[u8]) -> impl Iterator<Item = u128> + '_ {
    b.windows(16).map(|w| u128::from_le_bytes(w.try_into().unwrap()))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
