//! `--block-store URL` on the real emulators (MinIO, fake-gcs-server, Azurite): `stratusfs up`
//! keeps its blocks in each, with credentials and endpoints from the cloud's usual environment
//! variables; a bad URL, missing credentials, a missing bucket, wrong keys or a closed port fail
//! the command at once with one line naming the problem, and nothing is created.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::service::free_port;
use e2e::stratusfs::{binary, is_mounted};
use e2e::{azurite::Azurite, gcs::FakeGcs, minio::Minio};
use fs_core::blockstore::{BLOCK_STORE_ENV, open_backend};
use futures::TryStreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn up_command(dir: &Path, block_store: Option<&str>, env: &[(&str, String)]) -> Command {
    let mut c = Command::new(binary().unwrap());
    c.args(["up", "--mountpoint"])
        .arg(dir.join("mnt"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port().unwrap())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port().unwrap())]);
    if let Some(url) = block_store {
        c.args(["--block-store", url]);
    }
    // Only what the test gives: nothing of this process's environment leaks in.
    for v in BLOCK_STORE_ENV {
        c.env_remove(v);
    }
    // Never ask a cloud metadata endpoint for credentials.
    c.env("AWS_EC2_METADATA_DISABLED", "true");
    c.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    c
}

/// Runs `up` until it has mounted, writes or reads through the mount with `f`, and stops it.
fn with_up(dir: &Path, block_store: Option<&str>, env: &[(&str, String)], f: impl FnOnce(&Path)) -> String {
    let mnt = dir.join("mnt");
    let mut child = up_command(dir, block_store, env).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(is_mounted(&mnt) && std::fs::metadata(&mnt).is_ok()) {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            panic!("up {block_store:?} exited with {status}: {}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(Instant::now() < deadline, "up {block_store:?} did not mount");
        std::thread::sleep(Duration::from_millis(100));
    }
    f(&mnt);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_keeps_its_blocks_in_each_cloud_store_and_finds_them_again() {
    e2e::init();
    let (minio, gcs, azurite) =
        (Minio::start().await.unwrap(), FakeGcs::start().await.unwrap(), Azurite::start().await.unwrap());
    let stores = [
        (format!("s3://{}/up/vol", minio.bucket), minio.env(), minio.backend_spec("up/vol")),
        (format!("gs://{}/up/vol", gcs.bucket), gcs.env(), gcs.backend_spec("up/vol")),
        (format!("az://{}/up/vol", azurite.container), azurite.env(), azurite.backend_spec("up/vol")),
    ];
    for (seed, (url, env, spec)) in stores.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        // More than a block (4 MiB), and not a multiple of one.
        let bytes = pattern(9 << 20 | 12_345, seed as u8);
        let out = with_up(dir.path(), Some(&url), &env, |mnt| {
            let mut f = std::fs::File::create(mnt.join("data.bin")).unwrap();
            std::io::Write::write_all(&mut f, &bytes).unwrap();
            f.sync_all().unwrap();
        });
        assert!(out.contains(&url), "{url}: up names its block store: {out}");
        // The blocks are in the bucket, under the prefix; the probe left nothing; no folder of
        // blocks was made in the data dir.
        let store = open_backend(&spec).unwrap();
        let keys: Vec<String> = store.list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        assert!(keys.iter().any(|k| k.starts_with("blocks/") || k.contains("/blocks/")), "{url}: objects {keys:?}");
        assert!(!keys.iter().any(|k| k.contains(".stratusfs-probe")), "{url}: probe object left: {keys:?}");
        assert!(!dir.path().join("data/blocks").exists(), "{url}: a local blocks folder was made");
        // A second run on the same data dir needs no URL and reads every byte back from the store.
        let out = with_up(dir.path(), None, &env, |mnt| {
            assert!(std::fs::read(mnt.join("data.bin")).unwrap() == bytes, "{url}: bytes read back differ");
        });
        assert!(out.contains("reusing") && out.contains(&url), "{url}: {out}");
    }
}

/// Environment variables for a child process.
type Env = Vec<(&'static str, String)>;

/// Runs `up` that must fail: its status, last stderr line and how long it took.
fn failing_up(dir: &Path, url: &str, env: &[(&str, String)]) -> (Output, String, Duration) {
    let started = Instant::now();
    let out = up_command(dir, Some(url), env).stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = stderr.lines().last().unwrap_or_default().to_string();
    (out, last, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_block_store_fails_at_once_naming_the_problem_and_creates_nothing() {
    e2e::init();
    let (minio, gcs, azurite) =
        (Minio::start().await.unwrap(), FakeGcs::start().await.unwrap(), Azurite::start().await.unwrap());
    let closed = free_port().unwrap();
    let with = |env: Env, name: &'static str, value: String| -> Env {
        env.into_iter().map(|(k, v)| if k == name { (k, value.clone()) } else { (k, v) }).collect()
    };
    let cases: Vec<(String, Env, &str)> = vec![
        ("bucket/prefix".into(), vec![], "no scheme"),
        ("s4://bucket".into(), vec![], "unknown scheme"),
        ("s3://".into(), minio.env(), "no bucket"),
        ("file://relative".into(), vec![], "absolute path"),
        ("s3://b/p".into(), vec![], "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ("gs://b/p".into(), vec![], "GOOGLE_APPLICATION_CREDENTIALS"),
        ("az://c/p".into(), vec![], "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY"),
        ("s3://no-such-bucket/p".into(), minio.env(), "does not exist"),
        ("gs://no-such-bucket/p".into(), gcs.env(), "does not exist"),
        ("az://no-such-container/p".into(), azurite.env(), "does not exist"),
        (
            format!("s3://{}/p", minio.bucket),
            with(minio.env(), "AWS_SECRET_ACCESS_KEY", "wrong-secret".into()),
            "access denied",
        ),
        (
            format!("az://{}/p", azurite.container),
            with(azurite.env(), "AZURE_STORAGE_ACCOUNT_KEY", "d3Jvbmcta2V5".into()),
            "access denied",
        ),
        (
            format!("s3://{}/p", minio.bucket),
            with(minio.env(), "AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}")),
            "cannot reach",
        ),
    ];
    for (url, env, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (out, last, took) = failing_up(dir.path(), &url, &env);
        eprintln!("{url} ({took:.1?}): {last}");
        assert!(!out.status.success(), "{url}: up succeeded");
        assert!(last.starts_with("stratusfs: ") && last.contains(says), "{url}: expected {says:?} in {last:?}");
        assert!(last.contains(&url), "{url}: the error names the URL: {last:?}");
        assert!(took < Duration::from_secs(20), "{url}: took {took:?}");
        assert!(!dir.path().join("data").exists(), "{url}: the data dir was created");
        assert!(!is_mounted(&dir.path().join("mnt")), "{url}: something was mounted");
    }
    // Nothing was written into the buckets that exist.
    for spec in [minio.backend_spec(""), azurite.backend_spec("")] {
        let n = open_backend(&spec).unwrap().list(None).try_collect::<Vec<_>>().await.unwrap().len();
        assert_eq!(n, 0, "{}: objects were left", spec.kind());
    }
}
