//! The reference model through the kernel: random sequences of file operations applied by the
//! same code to a stratusfs mount and to a local ext4 directory; every result (success or errno)
//! and the final trees (names, kinds, sizes, bytes, permissions, link counts, symlink targets,
//! xattrs) must agree.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use e2e::stores::{Backend, Store};
use e2e::stratusfs::{MetaServer, Mount};

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const PATHS: &[&str] = &["a", "b", "c", "d1", "d2", "d1/a", "d1/b", "d1/d3", "d2/a", "d1/d3/a", "d2/d1"];

#[derive(Debug, Clone)]
enum Op {
    Create(String, usize),
    Write(String, u64, usize, u8),
    Truncate(String, u64),
    Rename(String, String),
    Link(String, String),
    Unlink(String),
    Mkdir(String),
    Rmdir(String),
    Symlink(String, String),
    Chmod(String, u32),
    SetXattr(String, String, u8),
    RemoveXattr(String, String),
}

fn random_op(r: &mut Rng) -> Op {
    let p = r.pick(PATHS).to_string();
    let q = r.pick(PATHS).to_string();
    match r.below(13) {
        0 | 1 => Op::Create(p, r.below(700_000) as usize),
        2 | 3 => Op::Write(p, r.below(1_200_000), 1 + r.below(300_000) as usize, r.below(250) as u8 + 1),
        4 => Op::Truncate(p, r.below(900_000)),
        5 => Op::Rename(p, q),
        6 => Op::Link(p, q),
        7 => Op::Unlink(p),
        8 => Op::Mkdir(p),
        9 => Op::Rmdir(p),
        10 => Op::Symlink(q, p),
        11 => Op::Chmod(p, [0o600, 0o644, 0o755, 0o700, 0o640][r.below(5) as usize]),
        _ => {
            if r.below(3) == 0 {
                Op::RemoveXattr(p, format!("user.k{}", r.below(2)))
            } else {
                Op::SetXattr(p, format!("user.k{}", r.below(2)), r.below(250) as u8)
            }
        }
    }
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Applies `op` under `root`; the result is what a user would compare.
fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let at = |p: &str| root.join(p);
    match op {
        Op::Create(p, len) => {
            let f = std::fs::OpenOptions::new().write(true).create_new(true).open(at(p)).map_err(errno)?;
            let data: Vec<u8> = (0..*len).map(|i| (i % 253) as u8).collect();
            f.write_all_at(&data, 0).map_err(errno)
        }
        Op::Write(p, off, len, byte) => {
            let f = std::fs::OpenOptions::new().write(true).open(at(p)).map_err(errno)?;
            f.write_all_at(&vec![*byte; *len], *off).map_err(errno)
        }
        Op::Truncate(p, len) => {
            let f = std::fs::OpenOptions::new().write(true).open(at(p)).map_err(errno)?;
            f.set_len(*len).map_err(errno)
        }
        Op::Rename(a, b) => std::fs::rename(at(a), at(b)).map_err(errno),
        Op::Link(a, b) => std::fs::hard_link(at(a), at(b)).map_err(errno),
        Op::Unlink(p) => std::fs::remove_file(at(p)).map_err(errno),
        Op::Mkdir(p) => std::fs::create_dir(at(p)).map_err(errno),
        Op::Rmdir(p) => std::fs::remove_dir(at(p)).map_err(errno),
        Op::Symlink(target, p) => std::os::unix::fs::symlink(target, at(p)).map_err(errno),
        Op::Chmod(p, mode) => {
            // Not through symlinks: lchmod does not exist on Linux, so only chmod real entries.
            let md = std::fs::symlink_metadata(at(p)).map_err(errno)?;
            if md.file_type().is_symlink() {
                return Ok(());
            }
            std::fs::set_permissions(at(p), std::fs::Permissions::from_mode(*mode)).map_err(errno)
        }
        Op::SetXattr(p, name, v) => {
            let (path, name) = (cpath(&at(p)), CString::new(name.as_str()).unwrap());
            // SAFETY: valid C strings and buffer.
            let r = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), [*v; 7].as_ptr().cast(), 7, 0) };
            if r == 0 { Ok(()) } else { Err(errno(std::io::Error::last_os_error())) }
        }
        Op::RemoveXattr(p, name) => {
            let (path, name) = (cpath(&at(p)), CString::new(name.as_str()).unwrap());
            // SAFETY: valid C strings.
            let r = unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) };
            if r == 0 { Ok(()) } else { Err(errno(std::io::Error::last_os_error())) }
        }
    }
}

/// Everything a user sees of a tree, as comparable text and bytes.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(&rel) };
        let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for n in names {
            let r = if rel.is_empty() {
                n.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", n.to_string_lossy())
            };
            let p = root.join(&r);
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let what = if ft.is_dir() {
                stack.push(r.clone());
                format!("dir mode={:o}", md.mode() & 0o7777)
            } else if ft.is_symlink() {
                format!("symlink -> {}", std::fs::read_link(&p).unwrap().display())
            } else {
                let data = std::fs::read(&p).unwrap();
                let sum = data.iter().fold(0u64, |h, &b| h.wrapping_mul(1_000_003).wrapping_add(b as u64));
                format!("file mode={:o} nlink={} size={} sum={sum:x}", md.mode() & 0o7777, md.nlink(), data.len())
            };
            let mut xattrs = Vec::new();
            if !ft.is_symlink() {
                for k in ["user.k0", "user.k1"] {
                    let (path, name) = (cpath(&p), CString::new(k).unwrap());
                    let mut buf = [0u8; 64];
                    // SAFETY: valid C strings and buffer.
                    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 64) };
                    if n >= 0 {
                        xattrs.push(format!("{k}={:?}", &buf[..n as usize]));
                    }
                }
            }
            out.insert(r, format!("{what} {}", xattrs.join(" ")));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_file_operations_agree_with_a_local_directory() {
    e2e::init();
    agree_with_a_local_directory(Backend::Local).await
}

// The same on each cloud store, in the soak tier.
on_each_backend!(soak: agree_with_a_local_directory);

async fn agree_with_a_local_directory(backend: Backend) {
    let store = Store::start(backend).await.unwrap();
    let meta = MetaServer::start_in(Path::new("/dev/shm"), &[]).await.unwrap();
    let token = meta.volume_on("v", store.spec("v"), |r| r.block_size = Some(256 * 1024)).await.unwrap();
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let sequences: u64 = std::env::var("STRATUSFS_MODEL_SEQUENCES").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let root = m.path.clone();
    tokio::task::spawn_blocking(move || {
        let mut ops_done = 0;
        for seed in 1..=sequences {
            let local = tempfile::tempdir().unwrap();
            let mount = root.join(format!("seq{seed}"));
            std::fs::create_dir(&mount).unwrap();
            let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut log = Vec::new();
            for _ in 0..150 {
                let op = random_op(&mut r);
                let want = apply(local.path(), &op);
                let got = apply(&mount, &op);
                log.push(format!("{op:?} -> {want:?}"));
                assert_eq!(
                    got,
                    want,
                    "seed {seed}: {op:?} differs (stratusfs {got:?}, ext4 {want:?}); ops:\n{}",
                    log.join("\n")
                );
                ops_done += 1;
            }
            let (want, got) = (snapshot(local.path()), snapshot(&mount));
            assert_eq!(got, want, "seed {seed}: the trees differ after:\n{}", log.join("\n"));
        }
        eprintln!("{sequences} sequences, {ops_done} operations: stratusfs and ext4 agree");
    })
    .await
    .unwrap();
    // The sequences ran through write-back creates too (docs/write-back-metadata.md): each
    // directory's second create asks for a delegation.
    let metrics = meta.metrics().await.unwrap();
    let granted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stratusfs_meta_delegations{volume=\"v\",event=\"granted\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    eprintln!("directory delegations granted during the sequences: {granted}");
    assert!(granted >= 1.0, "no sequence ran under a directory delegation");
}
