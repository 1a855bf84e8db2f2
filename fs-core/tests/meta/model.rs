//! Reference model: random sequences of namespace operations run against the server (over gRPC)
//! and against an in-memory model of POSIX semantics. Every result (success or errno) and the
//! final tree (names, kinds, modes, sizes, link counts, hard-link identity, symlink targets,
//! xattrs) must agree.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::fs::{Fs, Res};
use fs_core::testkit::pb;

const NAMES: [&str; 3] = ["a", "b", "c"];
const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

#[derive(Clone, Debug)]
enum Op {
    Create(String),
    Mkdir(String),
    Symlink(String, String),
    Unlink(String),
    Rmdir(String),
    Link(String, String),
    Rename(String, String, u32),
    Chmod(String, u32),
    Truncate(String, u64),
    SetXattr(String, u8, u8, u32),
    RemoveXattr(String, u8),
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(NAMES.to_vec()), 1..=3).prop_map(|v| v.join("/"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => path().prop_map(Op::Create),
        3 => path().prop_map(Op::Mkdir),
        1 => (path(), path()).prop_map(|(p, t)| Op::Symlink(p, t)),
        2 => path().prop_map(Op::Unlink),
        2 => path().prop_map(Op::Rmdir),
        2 => (path(), path()).prop_map(|(a, b)| Op::Link(a, b)),
        4 => (path(), path(), prop::sample::select(vec![0, RENAME_NOREPLACE, RENAME_EXCHANGE])).prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        1 => (path(), prop::sample::select(vec![0o600, 0o755, 0o4711, 0o1777])).prop_map(|(p, m)| Op::Chmod(p, m)),
        1 => (path(), 0u64..20_000_000).prop_map(|(p, s)| Op::Truncate(p, s)),
        1 => (path(), 0u8..2, 0u8..3, prop::sample::select(vec![0, 1, 2])).prop_map(|(p, n, v, f)| Op::SetXattr(p, n, v, f)),
        1 => (path(), 0u8..2).prop_map(|(p, n)| Op::RemoveXattr(p, n)),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    perm: u32,
    size: u64,
    target: String,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    entries: BTreeMap<String, usize>,
    parent: usize,
}

/// The model: nodes by index, 0 is the root; a node unreachable from the root is gone.
struct Model {
    nodes: Vec<Node>,
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

impl Model {
    fn new() -> Model {
        Model { nodes: vec![Node::new(Kind::Dir, 0o755, 0)] }
    }

    fn resolve(&self, path: &str) -> Res<usize> {
        let mut n = 0;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let node = &self.nodes[n];
            if node.kind != Kind::Dir {
                return Err(libc::ENOTDIR);
            }
            n = *node.entries.get(part).ok_or(libc::ENOENT)?;
        }
        Ok(n)
    }

    /// The node `path`'s parent resolves to, and the last name (like the client-side lookups of
    /// the test: whether the parent is a directory is the operation's check, see [`Model::dir`]).
    fn parent(&self, path: &str) -> Res<(usize, String)> {
        let (dir, name) = split(path);
        Ok((self.resolve(dir)?, name.to_string()))
    }

    fn dir(&self, d: usize) -> Res<()> {
        if self.nodes[d].kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(())
    }

    fn nlink(&self, n: usize) -> u32 {
        if self.nodes[n].kind == Kind::Dir {
            2 + self.nodes[n].entries.values().filter(|c| self.nodes[**c].kind == Kind::Dir).count() as u32
        } else {
            self.count_links(0, n)
        }
    }

    fn count_links(&self, dir: usize, target: usize) -> u32 {
        self.nodes[dir]
            .entries
            .values()
            .map(|c| {
                let here = (*c == target) as u32;
                here + if self.nodes[*c].kind == Kind::Dir { self.count_links(*c, target) } else { 0 }
            })
            .sum()
    }

    fn is_under(&self, ancestor: usize, mut n: usize) -> bool {
        loop {
            if n == ancestor {
                return true;
            }
            if n == 0 {
                return false;
            }
            n = self.nodes[n].parent;
        }
    }

    fn add(&mut self, path: &str, kind: Kind, target: &str) -> Res<()> {
        let (d, name) = self.parent(path)?;
        self.dir(d)?;
        if self.nodes[d].entries.contains_key(&name) {
            return Err(libc::EEXIST);
        }
        let mut node = Node::new(kind, if kind == Kind::Dir { 0o755 } else { 0o644 }, d);
        if kind == Kind::Symlink {
            node.perm = 0o777;
            node.target = target.to_string();
            node.size = target.len() as u64;
        }
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        self.nodes[d].entries.insert(name, i);
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Res<()> {
        match op {
            Op::Create(p) => self.add(p, Kind::File, ""),
            Op::Mkdir(p) => self.add(p, Kind::Dir, ""),
            Op::Symlink(p, t) => self.add(p, Kind::Symlink, t),
            Op::Unlink(p) => {
                let (d, name) = self.parent(p)?;
                self.dir(d)?;
                let c = *self.nodes[d].entries.get(&name).ok_or(libc::ENOENT)?;
                if self.nodes[c].kind == Kind::Dir {
                    return Err(libc::EISDIR);
                }
                self.nodes[d].entries.remove(&name);
                Ok(())
            }
            Op::Rmdir(p) => {
                let (d, name) = self.parent(p)?;
                self.dir(d)?;
                let c = *self.nodes[d].entries.get(&name).ok_or(libc::ENOENT)?;
                if self.nodes[c].kind != Kind::Dir {
                    return Err(libc::ENOTDIR);
                }
                if !self.nodes[c].entries.is_empty() {
                    return Err(libc::ENOTEMPTY);
                }
                self.nodes[d].entries.remove(&name);
                Ok(())
            }
            Op::Link(src, dst) => {
                let s = self.resolve(src)?;
                let (d, name) = self.parent(dst)?;
                if self.nodes[s].kind == Kind::Dir {
                    return Err(libc::EPERM);
                }
                self.dir(d)?;
                if self.nodes[d].entries.contains_key(&name) {
                    return Err(libc::EEXIST);
                }
                self.nodes[d].entries.insert(name, s);
                Ok(())
            }
            Op::Rename(src, dst, flags) => self.rename(src, dst, *flags),
            Op::Chmod(p, m) => {
                let n = self.resolve(p)?;
                self.nodes[n].perm = *m;
                Ok(())
            }
            Op::Truncate(p, size) => {
                let n = self.resolve(p)?;
                match self.nodes[n].kind {
                    Kind::Dir => Err(libc::EISDIR),
                    Kind::Symlink => Err(libc::EINVAL),
                    Kind::File => {
                        self.nodes[n].size = *size;
                        Ok(())
                    }
                }
            }
            Op::SetXattr(p, name, value, flags) => {
                let n = self.resolve(p)?;
                let key = xname(*name);
                let exists = self.nodes[n].xattrs.contains_key(&key);
                if *flags == 1 && exists {
                    return Err(libc::EEXIST);
                }
                if *flags == 2 && !exists {
                    return Err(libc::ENODATA);
                }
                self.nodes[n].xattrs.insert(key, vec![*value; *value as usize + 1]);
                Ok(())
            }
            Op::RemoveXattr(p, name) => {
                let n = self.resolve(p)?;
                self.nodes[n].xattrs.remove(&xname(*name)).map(drop).ok_or(libc::ENODATA)
            }
        }
    }

    fn rename(&mut self, src: &str, dst: &str, flags: u32) -> Res<()> {
        let (sd, sname) = self.parent(src)?;
        let (dd, dname) = self.parent(dst)?;
        self.dir(sd)?;
        self.dir(dd)?;
        let s = *self.nodes[sd].entries.get(&sname).ok_or(libc::ENOENT)?;
        if sd == dd && sname == dname {
            return Ok(());
        }
        let src_dir = self.nodes[s].kind == Kind::Dir;
        if src_dir && sd != dd && self.is_under(s, dd) {
            return Err(libc::EINVAL);
        }
        let t = self.nodes[dd].entries.get(&dname).copied();
        if flags == RENAME_EXCHANGE {
            let t = t.ok_or(libc::ENOENT)?;
            if self.nodes[t].kind == Kind::Dir && sd != dd && self.is_under(t, sd) {
                return Err(libc::EINVAL);
            }
            self.nodes[sd].entries.insert(sname, t);
            self.nodes[dd].entries.insert(dname, s);
            if self.nodes[s].kind == Kind::Dir {
                self.nodes[s].parent = dd;
            }
            if self.nodes[t].kind == Kind::Dir {
                self.nodes[t].parent = sd;
            }
            return Ok(());
        }
        if let Some(t) = t {
            if flags == RENAME_NOREPLACE {
                return Err(libc::EEXIST);
            }
            if t == s {
                return Ok(());
            }
            let dst_dir = self.nodes[t].kind == Kind::Dir;
            if src_dir && !dst_dir {
                return Err(libc::ENOTDIR);
            }
            if src_dir && !self.nodes[t].entries.is_empty() {
                return Err(libc::ENOTEMPTY);
            }
            if !src_dir && dst_dir {
                return Err(libc::EISDIR);
            }
        }
        self.nodes[sd].entries.remove(&sname);
        self.nodes[dd].entries.insert(dname, s);
        if src_dir {
            self.nodes[s].parent = dd;
        }
        Ok(())
    }
}

impl Node {
    fn new(kind: Kind, perm: u32, parent: usize) -> Node {
        Node { kind, perm, size: 0, target: String::new(), xattrs: BTreeMap::new(), entries: BTreeMap::new(), parent }
    }
}

fn xname(n: u8) -> Vec<u8> {
    format!("user.x{n}").into_bytes()
}

async fn apply_server(fs: &Fs, op: &Op) -> Res<()> {
    match op {
        Op::Create(p) => fs.create(p).await.map(drop),
        Op::Mkdir(p) => fs.mkdir(p).await.map(drop),
        Op::Symlink(p, t) => fs.symlink(p, t).await.map(drop),
        Op::Unlink(p) => fs.unlink(p).await,
        Op::Rmdir(p) => fs.rmdir(p).await,
        Op::Link(a, b) => fs.link(a, b).await.map(drop),
        Op::Rename(a, b, f) => fs.rename(a, b, *f).await,
        Op::Chmod(p, m) => {
            let ino = fs.resolve(p).await?;
            fs.setattr(ino, |r| r.perm = Some(*m)).await.map(drop)
        }
        Op::Truncate(p, s) => {
            let ino = fs.resolve(p).await?;
            fs.setattr(ino, |r| r.size = Some(*s)).await.map(drop)
        }
        Op::SetXattr(p, n, v, f) => {
            let ino = fs.resolve(p).await?;
            fs.setxattr(ino, &String::from_utf8(xname(*n)).unwrap(), &vec![*v; *v as usize + 1], *f).await
        }
        Op::RemoveXattr(p, n) => {
            let ino = fs.resolve(p).await?;
            fs.removexattr(ino, &String::from_utf8(xname(*n)).unwrap()).await
        }
    }
}

/// Walks both trees in step and compares them; `ids` maps server inodes to model nodes so hard
/// links must be the same inode on both sides.
#[allow(clippy::too_many_arguments)]
async fn compare(
    fs: &Fs,
    m: &Model,
    ino: u64,
    n: usize,
    path: &str,
    ids: &mut HashMap<u64, usize>,
) -> Result<(), String> {
    let attr = fs.getattr(ino).await.map_err(|e| format!("{path}: getattr errno {e}"))?;
    let node = &m.nodes[n];
    if let Some(prev) = ids.insert(ino, n)
        && prev != n
    {
        return Err(format!("{path}: server inode {ino} is model nodes {prev} and {n}"));
    }
    let kind = match attr.kind() {
        pb::FileKind::Regular => Kind::File,
        pb::FileKind::Directory => Kind::Dir,
        pb::FileKind::Symlink => Kind::Symlink,
        k => return Err(format!("{path}: unexpected kind {k:?}")),
    };
    let got = (kind, attr.perm, attr.nlink, if kind == Kind::Dir { 0 } else { attr.size });
    let want = (node.kind, node.perm, m.nlink(n), if node.kind == Kind::Dir { 0 } else { node.size });
    if got != want {
        return Err(format!("{path}: server (kind, perm, nlink, size) {got:?}, model {want:?}"));
    }
    if kind == Kind::Symlink {
        let t = fs.readlink(ino).await.map_err(|e| format!("{path}: readlink errno {e}"))?;
        if t != node.target.as_bytes() {
            return Err(format!("{path}: symlink target differs"));
        }
    }
    let mut xs = BTreeMap::new();
    for name in fs.listxattr(ino).await.map_err(|e| format!("{path}: listxattr errno {e}"))? {
        let v = fs
            .getxattr(ino, &String::from_utf8_lossy(&name))
            .await
            .map_err(|e| format!("{path}: getxattr errno {e}"))?;
        xs.insert(name, v);
    }
    if xs != node.xattrs {
        return Err(format!("{path}: xattrs differ: server {xs:?}, model {:?}", node.xattrs));
    }
    if kind == Kind::Dir {
        let entries = fs.readdir(ino, 2).await.map_err(|e| format!("{path}: readdir errno {e}"))?;
        let mut names: Vec<String> = entries.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect();
        names.sort();
        let want: Vec<String> = node.entries.keys().cloned().collect();
        if names != want {
            return Err(format!("{path}/: entries server {names:?}, model {want:?}"));
        }
        for e in entries {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let child = node.entries[&name];
            Box::pin(compare(fs, m, e.ino, child, &format!("{path}/{name}"), ids)).await?;
        }
    }
    Ok(())
}

async fn run_case(fs: &Fs, ops: &[Op]) -> Result<(), String> {
    let mut m = Model::new();
    for (i, op) in ops.iter().enumerate() {
        let want = m.apply(op);
        let got = apply_server(fs, op).await;
        if want != got {
            return Err(format!("op {i} {op:?}: server {got:?}, model {want:?}"));
        }
    }
    compare(fs, &m, fs.base, 0, "", &mut HashMap::new()).await
}

#[test]
fn namespace_operations_agree_with_the_model() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (srv, root) = rt.block_on(crate::setup());
    let cases: u32 = std::env::var("STRATUSFS_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let counter = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&prop::collection::vec(op(), 1..60), |ops| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        // Each case runs in a fresh directory of its own, seen as the root.
        let case_dir = format!("case{n}");
        let r = rt.block_on(async {
            let dir = root.mkdir(&case_dir).await.map_err(|e| format!("mkdir errno {e}"))?;
            let fs = Fs { base: dir.ino, ..root.clone() };
            run_case(&fs, &ops).await
        });
        r.map_err(TestCaseError::fail)
    });
    drop(srv);
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("reference model: {} sequences agreed", counter.into_inner());
}
