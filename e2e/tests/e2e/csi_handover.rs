//! Mounts that survive the node plugin's rollouts: `stratusfs-csi --node` as a process, a pod's
//! target published over its socket, and a successor started beside it as a DaemonSet with
//! `maxSurge: 1` starts one (`Driver::roll`). What the pod must not notice: a process that keeps
//! writing, fsyncing and reading back, with the file open and an fcntl lock held, sees no error
//! through 20 rollouts and a switch to a differently built binary; a process blocked in F_SETLKW
//! across a rollout is woken by the successor when the lock frees, and a signal still interrupts
//! another; a successor that refuses the handover, or dies in the middle of it, leaves the plugin
//! serving; two successors at once never both serve a session.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::csi::Driver;
use e2e::probe::{Probe, Steady};
use e2e::stratusfs::MetaServer;
use fs_core::admin::{ClaimSpec, Quota};
use stratusfs_csi::csi::volume_capability::access_mode::Mode;

use crate::csi_node::{HOST, capability, publish, server, sessions_of, unpublish};

/// F_SETLK of `[0, 1)` on `f` (`typ`: F_WRLCK, F_UNLCK).
fn setlk(f: &std::fs::File, typ: i32) {
    // SAFETY: a zeroed flock is valid; fields set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_len = 1;
    // SAFETY: fcntl with a valid flock pointer on an fd we own.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    assert_eq!(r, 0, "F_SETLK: {}", std::io::Error::last_os_error());
}

/// A volume with one claim, the node plugin, and the claim published into a pod's target.
struct World {
    meta: MetaServer,
    _files: tempfile::TempDir,
    driver: Driver,
    target: PathBuf,
    /// The session's mount source as mountinfo shows it.
    dialled: String,
    source: String,
    metrics_url: String,
    token: String,
    ca_pem: String,
}

impl World {
    /// Publishes the claim into `target` as kubelet would for another pod.
    async fn publish(&self, target: &Path) {
        let secrets = [("token", self.token.as_str()), ("ca.crt", self.ca_pem.as_str())];
        let cap = capability(Mode::MultiNodeMultiWriter, &[], "");
        let mut node = self.driver.node().await.unwrap();
        node.node_publish_volume(publish(VOLUME_ID, &self.source, target, &secrets, cap, false)).await.unwrap();
    }
}

const VOLUME_ID: &str = "team/vol/pvc-a";

/// `holder`: an fd holder runs beside the plugin (a crash then keeps the mounts).
async fn world(holder: bool) -> World {
    e2e::init();
    let (meta, ca_pem, files) = server().await;
    meta.volume("vol", |_| {}).await.unwrap();
    let mut admin = meta.admin().await.unwrap();
    let spec = ClaimSpec {
        path: "/pvc-a".into(),
        quota: Quota { bytes: 1 << 30, inodes: 1000 },
        mode: 0o777,
        ..Default::default()
    };
    let claim = admin.create_claim("vol", &spec).await.unwrap();
    let port = meta.addr.rsplit_once(':').unwrap().1.to_string();
    let map = format!("--service-address={HOST}:7480=127.0.0.1:{port}");
    let metrics_addr = format!("127.0.0.1:{}", e2e::service::free_port().unwrap());
    let metrics = format!("--metrics-listen={metrics_addr}");
    let mut driver = Driver::start(&["--node", &map, &metrics], &[]).await.unwrap();
    if holder {
        driver.start_holder().await.unwrap();
    }
    let target = driver.dir().join("pod-a");
    let w = World {
        meta,
        _files: files,
        target: target.clone(),
        dialled: format!("stratusfs://127.0.0.1:{port}/vol/pvc-a"),
        source: format!("stratusfs://{HOST}:7480/vol/pvc-a"),
        metrics_url: format!("http://{metrics_addr}/metrics"),
        token: claim.token.token.clone(),
        ca_pem,
        driver,
    };
    w.publish(&target).await;
    w
}

/// A request that always reaches the filesystem (an open and a close), made every millisecond
/// on a thread of its own; the longest one since the last `take`.
struct Sampler {
    longest_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(file: PathBuf) -> Sampler {
        let longest_us = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (longest_us.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let t = Instant::now();
                drop(std::fs::File::open(&file).expect("an open through the target failed"));
                l.fetch_max(t.elapsed().as_micros() as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Sampler { longest_us, stop, thread: Some(thread) }
    }

    fn take(&self) -> Duration {
        Duration::from_micros(self.longest_us.swap(0, Ordering::SeqCst))
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("the sampler saw a failed open");
    }
}

fn median_max(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

/// Checks that `path` holds `n` records of `record` bytes as `fsprobe steady` writes them.
fn check_records(path: &Path, n: u64, record: usize) {
    let data = std::fs::read(path).unwrap();
    assert_eq!(data.len() as u64, n * record as u64, "the file holds every record written");
    for (i, r) in data.chunks(record).enumerate() {
        assert!(r.iter().all(|&b| b == (i % 251) as u8), "record {i} differs");
    }
}

const RECORD: usize = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_of_the_node_plugin_keep_writes_open_files_locks_and_waiters() {
    let mut w = world(false).await;
    let data = w.target.join("data");
    let steady = Steady::start(&data, RECORD);
    // A lock the test holds, a waiter blocked on it across the rollouts (woken by the unlock
    // after them) and another one interrupted by a signal after them.
    let gate = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(w.target.join("gate"))
        .unwrap();
    setlk(&gate, libc::F_WRLCK);
    let woken = Probe::lock(&w.target.join("gate"), "posix", true, 0, 1, true);
    let woken = std::thread::spawn(move || {
        let mut woken = woken;
        (woken.line(), woken)
    });
    let interrupted = Probe::lock(&w.target.join("gate"), "posix", true, 0, 1, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not `gate`: a close of any fd of a file drops the process's fcntl locks on it.
    std::fs::write(w.target.join("sampled"), b"").unwrap();
    let sampler = Sampler::start(w.target.join("sampled"));
    let next = e2e::stratusfs::csi_next_binary().unwrap();
    let (mut rolls, mut waits) = (Vec::new(), Vec::new());
    for round in 0..21 {
        let before = steady.count();
        sampler.take();
        // The last rollout switches to another build of the driver.
        let program = (round == 20).then_some(next.as_path());
        rolls.push(w.driver.roll(program).await.unwrap_or_else(|e| panic!("rollout {round}: {e}")));
        steady.wait_past(before + 2, Duration::from_secs(20));
        waits.push(sampler.take());
        assert!(!steady.exited(), "the writer failed in rollout {round}");
        assert_eq!(sessions_of(&w.dialled), 1, "rollout {round}: one session, the successor's");
        if woken.is_finished() {
            panic!(
                "rollout {round}: the waiter stopped waiting for the lock the test holds: {:?}",
                woken.join().unwrap().0
            );
        }
    }
    sampler.finish();
    // The waiters: one interrupted by a signal, one woken by the unlock.
    let mut interrupted = interrupted;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(interrupted.pid()), nix::sys::signal::Signal::SIGUSR1).unwrap();
    assert_eq!(interrupted.line(), "eintr", "a signal interrupts a F_SETLKW that waited across the rollouts");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!woken.is_finished(), "the waiter got the lock the test holds");
    setlk(&gate, libc::F_UNLCK);
    let (line, woken) = woken.join().unwrap();
    assert_eq!(line, "locked", "the successor woke the waiter when the lock freed");
    woken.release();
    // The writer's lock still excludes another process.
    let mut other = Probe::lock(&data, "posix", true, 0, RECORD as u64, false);
    assert_eq!(other.line(), "busy", "the writer's fcntl lock was lost in the rollouts");
    drop(other);
    let (status, done) = steady.stop();
    assert!(status.success(), "the writer saw an error: {status}");
    let n = done.expect("the writer stopped cleanly");
    check_records(&data, n, RECORD);
    let (roll_med, roll_max) = median_max(&mut rolls[..20]);
    let (wait_med, wait_max) = median_max(&mut waits);
    eprintln!(
        "rollouts: 21 (the last to stratusfs-csi-next), {n} records of {RECORD} bytes written, fsynced and read back, \
         0 errors; successor start to serving median {roll_med:?} max {roll_max:?}; \
         longest open() across a rollout median {wait_med:?} max {wait_max:?}"
    );
    let mut node = w.driver.node().await.unwrap();
    node.node_unpublish_volume(unpublish(VOLUME_ID, &w.target)).await.unwrap();
    assert_eq!(sessions_of(&w.dialled), 0, "the successor ends the session at the last unpublish");
}

/// Asks the plugin for a takeover as a successor would, reads what it sends (the header and
/// every session) and then does `finish` with the socket instead of preparing the sessions.
fn half_successor(state_dir: &Path, finish: impl FnOnce(&std::os::unix::net::UnixStream)) {
    use std::io::Write;
    let sock = std::os::unix::net::UnixStream::connect(state_dir.join("handover.sock")).unwrap();
    (&sock).write_all(b"takeover\n").unwrap();
    let (header, fds) = fs_core::receive_frame(&sock).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["version"], 1, "{header}");
    assert_eq!(fds.len(), 1, "the owner lock travels with the header");
    for _ in 0..header["sessions"].as_array().unwrap().len() {
        let h = fs_core::Handover::receive(&sock).unwrap();
        assert_eq!(h.state.fds, h.fds.len());
    }
    finish(&sock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_that_does_not_finish_leaves_the_plugin_serving_and_two_successors_never_share() {
    let mut w = world(false).await;
    let data = w.target.join("data");
    let steady = Steady::start(&data, RECORD);
    let state_dir = w.driver.dir().join("state");
    let progress = |steady: &Steady, what: &str| {
        let before = steady.count();
        steady.wait_past(before + 2, Duration::from_secs(20));
        assert!(!steady.exited(), "the writer failed after {what}");
    };
    // A successor that cannot read the handover refuses it (as one of another version would).
    let dir = state_dir.clone();
    tokio::task::spawn_blocking(move || {
        half_successor(&dir, |sock| {
            use std::io::Write;
            (&*sock).write_all(b"refused this build reads another handover version\n").unwrap();
        })
    })
    .await
    .unwrap();
    progress(&steady, "a refused handover");
    assert!(w.driver.try_exit().is_none(), "the plugin exited after a refused handover");
    // A successor that dies after taking the values, before preparing them.
    let dir = state_dir.clone();
    tokio::task::spawn_blocking(move || half_successor(&dir, |_| {})).await.unwrap();
    progress(&steady, "a successor that died mid-handover");
    assert!(w.driver.try_exit().is_none(), "the plugin exited after a successor died mid-handover");
    assert_eq!(sessions_of(&w.dialled), 1);
    let log = w.driver.log_tail(200);
    assert!(log.contains("did not take the sessions over; serving them on"), "{log}");
    // It still serves the CSI socket: a second pod is published, sharing the session.
    let second = w.driver.dir().join("pod-b");
    w.publish(&second).await;
    assert_eq!(std::fs::read(second.join("data")).unwrap().len() % RECORD, 0);
    assert_eq!(sessions_of(&w.dialled), 1);

    // Two successors at once: each session ends with one process, which serves it.
    let next = e2e::stratusfs::csi_next_binary().unwrap();
    let mut first = w.driver.take_process().unwrap();
    let mut s = [w.driver.spawn_process(&next).unwrap(), w.driver.spawn_process(&next).unwrap()];
    let deadline = Instant::now() + Duration::from_secs(60);
    const HANDED: &str = "handed every session to the successor";
    loop {
        for p in s.iter_mut() {
            if let Some(status) = p.try_exit() {
                panic!("{} exited with {status}:\n{}", p.name(), p.log_tail(40));
            }
        }
        let serving = s.iter().all(|p| p.logged("stratusfs-csi serving"));
        let handed = s.iter().filter(|p| p.logged(HANDED)).count();
        if serving && handed == 1 {
            break;
        }
        assert!(handed < 2, "both successors handed the sessions on");
        assert!(Instant::now() < deadline, "two successors did not settle within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One took the sessions from the first plugin, the other took them from it in turn: the one
    // that did not hand them on serves them; the others end at SIGTERM.
    assert!(first.logged(HANDED));
    let [a, b] = s;
    let (mut handed, owner) = if a.logged(HANDED) { (a, b) } else { (b, a) };
    for p in [&mut first, &mut handed] {
        let status = p.terminate(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "{} ended with {status:?}", p.name());
    }
    w.driver.replace(owner);
    progress(&steady, "two successors");
    assert_eq!(sessions_of(&w.dialled), 1, "one session, served by one process");
    // The second pod's target moved with the session: its unpublish ends nothing yet.
    let mut node = w.driver.node().await.unwrap();
    node.node_unpublish_volume(unpublish(VOLUME_ID, &second)).await.unwrap();
    assert_eq!(sessions_of(&w.dialled), 1, "the first pod still has the session");
    let (status, done) = steady.stop();
    assert!(status.success(), "the writer saw an error: {status}");
    check_records(&data, done.expect("the writer stopped cleanly"), RECORD);
    node.node_unpublish_volume(unpublish(VOLUME_ID, &w.target)).await.unwrap();
    assert_eq!(sessions_of(&w.dialled), 0);
}

/// The plugin's metric `name` for the claim (0 when absent).
async fn metric(metrics_url: &str, name: &str) -> u64 {
    // A plugin just started listens for /metrics a moment after it serves its socket.
    let mut tries = 0;
    let text = loop {
        match e2e::service::http_client().get(metrics_url).send().await {
            Ok(r) => break r.text().await.unwrap(),
            Err(e) if tries < 50 => {
                tries += 1;
                tracing::debug!(error = %e, "metrics not served yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the node plugin's metrics at {metrics_url}: {e}"),
        }
    };
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(VOLUME_ID))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The mount id of the session's FUSE mount (mountinfo's first field): the same id after a crash
/// means the mount was never remounted.
fn session_mount_id(dialled: &str) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line =
        mounts.lines().find(|l| l.contains(dialled) && l.contains("/state/sessions/")).expect("the session's mount");
    line.split(' ').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9s_of_the_node_plugin_keep_mounts_and_never_report_success_over_lost_bytes() {
    let mut w = world(true).await;
    let metrics_url = w.metrics_url.clone();
    let data = w.target.join("data");
    let steady = Steady::tolerating_lost(&data, RECORD);
    std::fs::write(w.target.join("sampled"), b"").unwrap();
    let sampler = Sampler::start(w.target.join("sampled"));
    let mount_id = session_mount_id(&w.dialled);
    let (mut restarts, mut waits) = (Vec::new(), Vec::new());
    // Each plugin counts what it replayed and reported (its metrics end with it): summed here.
    let (mut resent, mut lost_reported) = (0, 0);
    for round in 0..20 {
        let before = steady.count();
        resent += metric(&metrics_url, "stratusfs_csi_resent_requests").await;
        lost_reported += metric(&metrics_url, "stratusfs_csi_lost_writes_reported").await;
        // A uniformly random instant: between a write and its fsync, in an fsync, anywhere.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        tokio::time::sleep(Duration::from_micros(u64::from(nanos) % 50_000)).await;
        sampler.take();
        let t = Instant::now();
        w.driver.kill9();
        w.driver.restart().await.unwrap_or_else(|e| panic!("restart {round}: {e}"));
        restarts.push(t.elapsed());
        steady.wait_past(before + 2, Duration::from_secs(30));
        waits.push(sampler.take());
        assert!(!steady.exited(), "the writer failed after kill -9 {round}");
        assert_eq!(session_mount_id(&w.dialled), mount_id, "kill -9 {round}: the session was mounted again");
    }
    sampler.finish();
    resent += metric(&metrics_url, "stratusfs_csi_resent_requests").await;
    lost_reported += metric(&metrics_url, "stratusfs_csi_lost_writes_reported").await;
    let lost_seen = steady.lost();
    let (status, done) = steady.stop();
    assert!(status.success(), "the writer saw an error other than EIO over lost writes: {status}");
    let n = done.expect("the writer stopped cleanly");
    assert!(lost_reported >= lost_seen, "every EIO the writer saw was counted ({lost_reported} < {lost_seen})");
    // Every record whose fsync succeeded reads back: no success was given over lost bytes.
    check_records(&data, n, RECORD);
    let (restart_med, restart_max) = median_max(&mut restarts);
    let (wait_med, wait_max) = median_max(&mut waits);
    eprintln!(
        "kill -9s: 20, {n} records written, fsynced and read back; EIO over lost writes seen by the writer {} \
         (reported by the plugins {lost_reported}), requests replayed {resent}, bytes lost \
         under a success 0; kill to the CSI socket answering again (polled every 100 ms) median {restart_med:?} max {restart_max:?}; longest open() across \
         a kill -9 median {wait_med:?} max {wait_max:?}",
        lost_seen
    );
    let mut node = w.driver.node().await.unwrap();
    node.node_unpublish_volume(unpublish(VOLUME_ID, &w.target)).await.unwrap();
    assert_eq!(sessions_of(&w.dialled), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: the handover benchmark (waits across 20 rollouts and 20 kill -9s with 50 sessions, memory)"]
async fn handover_benchmark_waits_and_memory_with_50_sessions() {
    let mut w = world(true).await;
    let rss = crate::csi::rss_mib;
    println!(
        "node plugin memory with 1 session: {:.1} MiB (fd holder {:.1} MiB)",
        rss(w.driver.pid()),
        rss(w.driver.holder_pid())
    );
    // 49 more claims, each published into a pod of its own: 50 sessions.
    let mut admin = w.meta.admin().await.unwrap();
    let mut node = w.driver.node().await.unwrap();
    for i in 1..50 {
        let spec = ClaimSpec {
            path: format!("/pvc-{i}"),
            quota: Quota { bytes: 1 << 30, inodes: 1000 },
            mode: 0o777,
            ..Default::default()
        };
        let claim = admin.create_claim("vol", &spec).await.unwrap();
        let secrets = [("token", claim.token.token.as_str()), ("ca.crt", w.ca_pem.as_str())];
        let cap = capability(Mode::MultiNodeMultiWriter, &[], "");
        let source = format!("stratusfs://{HOST}:7480/vol/pvc-{i}");
        let target = w.driver.dir().join(format!("pod-{i}"));
        node.node_publish_volume(publish(&format!("team/vol/pvc-{i}"), &source, &target, &secrets, cap, false))
            .await
            .unwrap();
        std::fs::write(target.join("f"), b"x").unwrap();
    }
    println!(
        "node plugin memory with 50 sessions: {:.1} MiB (fd holder {:.1} MiB)",
        rss(w.driver.pid()),
        rss(w.driver.holder_pid())
    );
    let data = w.target.join("data");
    let steady = Steady::tolerating_lost(&data, RECORD);
    std::fs::write(w.target.join("sampled"), b"").unwrap();
    let sampler = Sampler::start(w.target.join("sampled"));
    let (mut planned, mut crashed) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let before = steady.count();
        sampler.take();
        w.driver.roll(None).await.unwrap();
        steady.wait_past(before + 2, Duration::from_secs(60));
        planned.push(sampler.take());
    }
    for _ in 0..20 {
        let before = steady.count();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        tokio::time::sleep(Duration::from_micros(u64::from(nanos) % 50_000)).await;
        sampler.take();
        w.driver.kill9();
        w.driver.restart().await.unwrap();
        steady.wait_past(before + 2, Duration::from_secs(60));
        crashed.push(sampler.take());
    }
    sampler.finish();
    let (status, done) = steady.stop();
    assert!(status.success());
    check_records(&data, done.unwrap(), RECORD);
    let (pm, px) = median_max(&mut planned);
    let (cm, cx) = median_max(&mut crashed);
    println!("with 50 sessions, the longest open() across a rollout: median {pm:?}, max {px:?} (20)");
    println!("with 50 sessions, the longest open() across a kill -9: median {cm:?}, max {cx:?} (20)");
    println!("node plugin memory after them: {:.1} MiB", rss(w.driver.pid()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_cannot_read_the_handover_says_why_on_its_pod() {
    // The plugin serving the node speaks a header version this build does not read (version 2):
    // the successor refuses it, exits non-zero (the rollout stalls: the pod restarts with
    // backoff) and publishes a Warning Event on its own pod with the reason.
    e2e::init();
    let cp = e2e::kube::ControlPlane::start().await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let listener = std::os::unix::net::UnixListener::bind(state.path().join("handover.sock")).unwrap();
    let owner = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let (sock, _) = listener.accept().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&sock).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "takeover");
        let lock = std::fs::File::open("/dev/null").unwrap();
        let header = br#"{"version":2,"sessions":[],"compression":"a field of version 2"}"#;
        fs_core::send_frame(&sock, header, &[lock.as_raw_fd()]).unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(&sock).read_line(&mut answer).unwrap();
        let _ = (&sock).write_all(b"");
        answer
    });
    let out = std::process::Command::new(e2e::stratusfs::csi_binary().unwrap())
        .args(["--node", "--node-id=node-a", "--endpoint=unix:///nonexistent/csi.sock"])
        .arg(format!("--state-dir={}", state.path().display()))
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("POD_NAME", "rel-csi-node-new")
        .env("POD_NAMESPACE", "default")
        .env("NODE_NAME", "node-a")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the successor must not go on: {stderr}");
    assert!(stderr.contains("version 2"), "{stderr}");
    let answer = owner.join().unwrap();
    assert!(answer.starts_with("refused") && answer.contains("version 2"), "the owner is told why: {answer}");
    let events = cp
        .kubectl(&[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector=involvedObject.name=rel-csi-node-new",
            "-o",
            "json",
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&events.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ev = v["items"].as_array().and_then(|a| a.first()).unwrap_or_else(|| panic!("no event on the pod: {text}"));
    assert_eq!(ev["reason"], "HandoverRefused", "{ev}");
    assert_eq!(ev["type"], "Warning", "{ev}");
    assert!(ev["message"].as_str().unwrap_or_default().contains("version 2"), "{ev}");
}
