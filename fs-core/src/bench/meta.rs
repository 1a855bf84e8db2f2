//! `stratusfs bench meta`: throughput and latency of the metadata server over TLS, beside the
//! same operations called in-process on the store (the limit), and memory per idle session.
//!
//! The server runs as a child process (this same binary, `stratusfs meta`) on loopback so its
//! memory can be read apart from the clients'; the in-process figures use a volume opened in this
//! process. Everything lives in a temporary directory removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;

use crate::blockstore::BackendSpec;
use crate::metaclient::{AdminClient, Session, connect};
use crate::server::access::Caller;
use crate::server::store::volume::VolumeDb;
use crate::tls::ClientTrust;
use crate::wire::pb;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    /// Session counts to run the operations with.
    pub concurrency: Vec<usize>,
    /// Files per concurrency level (split among the sessions).
    pub files: usize,
    /// Idle sessions to open for the memory figure.
    pub idle_sessions: usize,
    /// Run the server with --sync.
    pub sync: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs { concurrency: vec![1, 16, 64], files: 4000, idle_sessions: 500, sync: false }
    }
}

/// Latencies of one phase and its wall time.
struct Phase {
    lat: Vec<Duration>,
    wall: Duration,
}

impl Phase {
    fn ops_per_sec(&self) -> f64 {
        self.lat.len() as f64 / self.wall.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> Duration {
        self.lat.sort_unstable();
        self.lat[((self.lat.len() as f64 - 1.0) * p).round() as usize]
    }
}

const OPS: [&str; 5] = ["create", "getattr", "readdir", "rename", "unlink"];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Raises the open-file limit to the hard limit (many sessions need many sockets).
fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 0,
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct ServerProcess {
    child: Child,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_server(dir: &Path, sync: bool) -> anyhow::Result<(ServerProcess, String, String)> {
    let exe = std::env::current_exe().context("locating the stratusfs binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("meta")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--gc-interval-secs",
            "0",
            "--lease-secs",
            "300",
        ])
        .arg("--admin-token-file")
        .arg(dir.join("admin.token"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if sync {
        cmd.arg("--sync");
    }
    let mut child = cmd.spawn().context("starting stratusfs meta")?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(tokio::process::ChildStdout::from_std(stdout)?).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the server did not start within 30 s")??
        .context("the server exited before it listened")?;
    // "stratusfs meta listening on ADDR (TLS, fingerprint FP), ..."
    let addr = line.split_whitespace().nth(4).context("no address in the server's first line")?.to_string();
    let fp = line.split("fingerprint ").nth(1).and_then(|s| s.split(')').next()).context("no fingerprint")?.to_string();
    Ok((ServerProcess { child }, addr, fp))
}

/// Runs `per_session` operations in each of `sessions.len()` tasks; `op(session index, i)`.
async fn phase<S, F, Fut>(sessions: &[S], per_session: usize, op: F) -> anyhow::Result<Phase>
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, usize, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (k, s) in sessions.iter().enumerate() {
        let (s, op) = (s.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_session);
            for i in 0..per_session {
                let t = Instant::now();
                op(s.clone(), k, i).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok(Phase { lat, wall: start.elapsed() })
}

fn ctx(s: &Session) -> Option<pb::Context> {
    Some(s.ctx(0, 0, 1))
}

fn name(i: usize) -> Vec<u8> {
    format!("f{i}").into_bytes()
}

/// Where the phases run: a session over gRPC/TLS, or the store in this process (no gRPC, no TLS).
#[derive(Clone)]
enum Target {
    Tls(Arc<Session>),
    Local(Arc<VolumeDb>),
}

impl Target {
    async fn mkdir(&self, parent: u64, name: Vec<u8>) -> anyhow::Result<u64> {
        let req = |ctx| pb::MkNodRequest {
            ctx,
            parent,
            name,
            kind: pb::FileKind::Directory as i32,
            perm: 0o755,
            ..Default::default()
        };
        Ok(match self {
            Target::Tls(s) => s.rpc.clone().mk_dir(req(ctx(s))).await?.into_inner().attr.map_or(0, |a| a.ino),
            Target::Local(v) => v.mknod(&Caller::admin(), req(None)).await?.0,
        })
    }

    async fn create(&self, parent: u64, name: Vec<u8>) -> anyhow::Result<u64> {
        let req = |ctx| pb::MkNodRequest {
            ctx,
            parent,
            name,
            kind: pb::FileKind::Regular as i32,
            perm: 0o644,
            ..Default::default()
        };
        Ok(match self {
            Target::Tls(s) => s.rpc.clone().mk_nod(req(ctx(s))).await?.into_inner().attr.map_or(0, |a| a.ino),
            Target::Local(v) => v.mknod(&Caller::admin(), req(None)).await?.0,
        })
    }

    async fn getattr(&self, ino: u64) -> anyhow::Result<()> {
        match self {
            Target::Tls(s) => drop(s.rpc.clone().get_attr(pb::InodeRequest { ctx: ctx(s), ino }).await?),
            Target::Local(v) => drop(v.getattr(&Caller::admin(), ino)?),
        }
        Ok(())
    }

    async fn readdir(&self, ino: u64) -> anyhow::Result<()> {
        match self {
            Target::Tls(s) => {
                let req = pb::ReadDirRequest { ctx: ctx(s), ino, cookie: 0, limit: 128, plus: true };
                drop(s.rpc.clone().read_dir(req).await?)
            }
            Target::Local(v) => drop(v.readdir(&Caller::admin(), ino, 0, 128, true)?),
        }
        Ok(())
    }

    async fn rename(&self, dir: u64, name: Vec<u8>, new_name: Vec<u8>) -> anyhow::Result<()> {
        let req = |ctx| pb::RenameRequest { ctx, parent: dir, name, new_parent: dir, new_name, flags: 0 };
        match self {
            Target::Tls(s) => drop(s.rpc.clone().rename(req(ctx(s))).await?),
            Target::Local(v) => v.rename(&Caller::admin(), req(None)).await?,
        }
        Ok(())
    }

    async fn unlink(&self, dir: u64, name: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Target::Tls(s) => drop(s.rpc.clone().unlink(pb::NameRequest { ctx: ctx(s), parent: dir, name }).await?),
            Target::Local(v) => v.unlink(&Caller::admin(), dir, name).await?,
        }
        Ok(())
    }
}

fn renamed(i: usize) -> Vec<u8> {
    let mut n = name(i);
    n.push(b'r');
    n
}

/// The five phases with one task per (target, directory): create, getattr, readdir (one page of
/// 128 with attributes), rename, unlink, over `files` files split among the tasks.
async fn phases(pairs: Vec<(Target, u64)>, files: usize) -> anyhow::Result<Vec<Phase>> {
    let per = (files / pairs.len()).max(1);
    let inos = Arc::new(parking_lot::Mutex::new(vec![vec![0u64; per]; pairs.len()]));
    let mut out = Vec::new();
    let i2 = inos.clone();
    out.push(
        phase(&pairs, per, move |(t, d), k, i| {
            let inos = i2.clone();
            async move {
                let ino = t.create(d, name(i)).await?;
                inos.lock()[k][i] = ino;
                Ok(())
            }
        })
        .await?,
    );
    let snapshot = Arc::new(inos.lock().clone());
    out.push(
        phase(&pairs, per * 3, move |(t, _), k, i| {
            let ino = snapshot[k][i % per];
            async move { t.getattr(ino).await }
        })
        .await?,
    );
    out.push(phase(&pairs, (per / 8).max(20), |(t, d), _, _| async move { t.readdir(d).await }).await?);
    out.push(phase(&pairs, per, |(t, d), _, i| async move { t.rename(d, name(i), renamed(i)).await }).await?);
    out.push(phase(&pairs, per, |(t, d), _, i| async move { t.unlink(d, renamed(i)).await }).await?);
    Ok(out)
}

/// `c` directories under a new directory `top` of `t`'s root.
async fn dirs(t: &Target, top: String, c: usize) -> anyhow::Result<Vec<u64>> {
    let top = t.mkdir(1, top.into_bytes()).await?;
    let mut out = Vec::new();
    for k in 0..c {
        out.push(t.mkdir(top, format!("s{k}").into_bytes()).await?);
    }
    Ok(out)
}

/// Runs the benchmark and prints its report.
pub async fn bench_meta(args: BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let nofile = raise_nofile();
    if (args.idle_sessions as u64) * 2 + 256 > nofile {
        bail!(
            "{} idle sessions need about {} open files; the limit is {nofile} (raise it with ulimit -n)",
            args.idle_sessions,
            args.idle_sessions * 2 + 256
        );
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("stratusfs-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let admin_token = uuid::Uuid::new_v4().to_string();
    std::fs::write(dir.join("admin.token"), &admin_token)?;
    let (child, addr, fp) = spawn_server(&dir, args.sync).await?;
    let trust = ClientTrust { ca_file: None, fingerprint: Some(fp), ..Default::default() };
    let backend_json = serde_json::to_string(&BackendSpec::Local { path: dir.join("blocks"), prefix: String::new() })?;
    let mut admin = AdminClient::connect(&addr, &trust, &admin_token).await?;
    let store = BackendSpec::Local { path: dir.join("blocks"), prefix: String::new() };
    admin.create_volume(&crate::admin::VolumeSpec::new("bench", store)).await?;
    let token = admin.create_token("bench", &crate::admin::TokenScope::default()).await?.token;

    // The in-process limit: a volume of its own in this process.
    let info = pb::VolumeInfo {
        uuid: "inproc".into(),
        name: "inproc".into(),
        block_size: crate::wire::DEFAULT_BLOCK_SIZE,
        backend_json,
        ..Default::default()
    };
    let local = VolumeDb::create_db(&dir.join("inproc.redb"), info, args.sync)?;

    println!(
        "stratusfs bench meta: server {addr} (child process, TLS), {} files per level, sync={}",
        args.files, args.sync
    );
    println!(
        "{:<8} {:>8} | {:>10} {:>8} {:>8} | {:>10} {:>8} {:>8} | {:>6}",
        "op", "sessions", "TLS ops/s", "p50 ms", "p99 ms", "local op/s", "p50 ms", "p99 ms", "ratio"
    );
    for (level, &c) in args.concurrency.iter().enumerate() {
        let mut sessions = Vec::new();
        for _ in 0..c {
            sessions
                .push(Session::open(connect(&addr, &trust, Duration::ZERO).await?, "bench", &token, "bench").await?);
        }
        let tls_dirs = dirs(&Target::Tls(sessions[0].clone()), format!("tls{level}"), c).await?;
        let tls_pairs = sessions.iter().map(|s| Target::Tls(s.clone())).zip(tls_dirs).collect();
        let mut tls = phases(tls_pairs, args.files).await?;
        let local_target = Target::Local(local.clone());
        let local_dirs = dirs(&local_target, format!("local{level}"), c).await?;
        let mut loc = phases(local_dirs.into_iter().map(|d| (local_target.clone(), d)).collect(), args.files).await?;
        for (i, op) in OPS.iter().enumerate() {
            let (t, l) = (&mut tls[i], &mut loc[i]);
            let (t50, t99, l50, l99) = (t.pct(0.5), t.pct(0.99), l.pct(0.5), l.pct(0.99));
            println!(
                "{op:<8} {c:>8} | {:>10.0} {:>8.3} {:>8.3} | {:>10.0} {:>8.3} {:>8.3} | {:>5.0}%",
                t.ops_per_sec(),
                ms(t50),
                ms(t99),
                l.ops_per_sec(),
                ms(l50),
                ms(l99),
                100.0 * t.ops_per_sec() / l.ops_per_sec()
            );
        }
        for s in &sessions {
            let _ = s.close().await;
        }
        if started.elapsed() > Duration::from_secs(240) {
            println!("(stopping early: the benchmark keeps to 5 minutes)");
            break;
        }
    }

    // Lock hand-over: B waits in F_SETLKW, A releases; time until B holds the lock.
    {
        let a = Session::open(connect(&addr, &trust, Duration::ZERO).await?, "bench", &token, "lock-a").await?;
        let b = Session::open(connect(&addr, &trust, Duration::ZERO).await?, "bench", &token, "lock-b").await?;
        let ino = a
            .rpc
            .clone()
            .mk_nod(pb::MkNodRequest {
                ctx: ctx(&a),
                parent: 1,
                name: b"lockfile".to_vec(),
                kind: pb::FileKind::Regular as i32,
                perm: 0o644,
                ..Default::default()
            })
            .await?
            .into_inner()
            .attr
            .map(|x| x.ino)
            .unwrap_or(0);
        let req = |s: &Session, t: pb::LockType, wait: bool| pb::LockRequest {
            ctx: ctx(s),
            ino,
            owner: 1,
            kind: pb::LockKind::Posix as i32,
            r#type: t as i32,
            start: 0,
            end: u64::MAX,
            wait,
            open_id: 0,
        };
        let mut lat = Vec::new();
        for _ in 0..200 {
            a.rpc.clone().set_lock(req(&a, pb::LockType::Write, false)).await?;
            let mut rpc = b.rpc.clone();
            let want = req(&b, pb::LockType::Write, true);
            let waiter = tokio::spawn(async move { rpc.set_lock(want).await.map(|_| Instant::now()) });
            tokio::time::sleep(Duration::from_millis(2)).await;
            let released = Instant::now();
            a.rpc.clone().set_lock(req(&a, pb::LockType::Unlock, false)).await?;
            let granted = waiter.await??;
            lat.push(granted.saturating_duration_since(released));
            b.rpc.clone().set_lock(req(&b, pb::LockType::Unlock, false)).await?;
        }
        let mut p = Phase { wall: lat.iter().sum(), lat };
        println!(
            "lock wake-up (release -> waiter granted, 200 hand-overs): p50 {:.3} ms, p99 {:.3} ms; a client polling every 100 ms would wait 50 ms on average, up to 100 ms",
            ms(p.pct(0.5)),
            ms(p.pct(0.99))
        );
    }

    // Memory per idle session, and latency with them open.
    let pid = child.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let mut idle = Vec::with_capacity(args.idle_sessions);
    let open_start = Instant::now();
    for _ in 0..args.idle_sessions {
        idle.push(Session::open(connect(&addr, &trust, Duration::ZERO).await?, "bench", &token, "idle").await?);
    }
    let open_time = open_start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    println!(
        "idle sessions: {} opened in {:.1} s (each its own TLS connection); server RSS {} KiB -> {} KiB: {:.1} KiB per session",
        args.idle_sessions,
        open_time.as_secs_f64(),
        before,
        after,
        (after.saturating_sub(before)) as f64 / args.idle_sessions.max(1) as f64
    );
    let probe: Vec<Arc<Session>> = idle.iter().take(16).cloned().collect();
    let mut p = phase(&probe, 500, |s: Arc<Session>, _, _| async move {
        s.rpc.clone().get_attr(pb::InodeRequest { ctx: ctx(&s), ino: 1 }).await?;
        Ok(())
    })
    .await?;
    println!(
        "getattr with {} sessions open, 16 active: {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms",
        args.idle_sessions,
        p.ops_per_sec(),
        ms(p.pct(0.5)),
        ms(p.pct(0.99))
    );
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    drop(idle);
    drop(local);
    drop(child);
    Ok(())
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
