//! The harness keeps its promises: a dropped fixture leaves no process behind, and a service that
//! dies at start-up is reported with its log.

use std::process::Command;
use std::time::Duration;

use e2e::HarnessError;
use e2e::minio::Minio;
use e2e::service::Service;

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; it counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z "),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_fixture_kills_its_process_group() {
    e2e::init();
    let minio = Minio::start().await.unwrap();
    let pid = minio.service().pid();
    assert!(alive(pid));
    drop(minio);
    assert!(!alive(pid), "MinIO (pid {pid}) still runs after its fixture was dropped");

    // A grandchild started by a service dies with it too.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 300 & echo $! > child.pid; wait"]).current_dir(dir.path());
    let svc = Service::spawn("sh", cmd, dir.path()).unwrap();
    let pidfile = dir.path().join("child.pid");
    let mut grandchild = None;
    for _ in 0..50 {
        if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
            grandchild = Some(pid);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grandchild = grandchild.expect("the shell wrote its child's pid");
    assert!(alive(grandchild));
    drop(svc);
    // The grandchild is reparented to init (or a subreaper) when killed; give it a moment to be reaped.
    for _ in 0..40 {
        if !alive(grandchild) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(grandchild), "a grandchild (pid {grandchild}) survived its service");
}

#[tokio::test]
async fn a_service_that_exits_early_is_reported_with_its_log() {
    e2e::init();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo 'cannot bind: address in use' >&2; exit 3"]);
    let mut svc = Service::spawn("failing", cmd, dir.path()).unwrap();
    let err =
        svc.wait_ready(Duration::from_secs(10), || async { Err::<(), _>("not yet".to_string()) }).await.unwrap_err();
    assert!(matches!(err, HarnessError::Exited { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("failing") && msg.contains("cannot bind: address in use"), "{msg}");
}
