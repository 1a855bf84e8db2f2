//! An object store that fails mid-write loses nothing: transient failures (503 Slow Down, reset
//! connections) are retried unseen; a store that stays down makes fsync and close return EIO,
//! never success, while the writes stay in the mount; once the store is back the next fsync
//! succeeds, writes a failed close left behind are stored by the mount itself, and every byte
//! reads back through a fresh mount. Through the kernel, on each cloud store's emulator behind
//! the fault-injecting proxy, and on MinIO stopped and restarted.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use e2e::minio::Minio;
use e2e::proxy::{Fault, StoreProxy};
use e2e::stores::{Backend, Store, through};
use e2e::stratusfs::{MetaServer, Mount};

on_each_backend!(cloud: a_failing_store_gives_eio_at_fsync_keeps_the_writes_and_takes_them_when_back);

const MIB: usize = 1 << 20;

pub(crate) fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(2654435761).wrapping_add(seed as u64).to_le_bytes()[1]).collect()
}

/// A volume on a store of `backend` behind the fault-injecting proxy (`tweak` sets its block
/// size, compression).
pub(crate) struct Proxied {
    pub meta: MetaServer,
    pub proxy: StoreProxy,
    pub token: String,
    /// Bind it (not `..`): the store lives as long as the binding.
    pub _store: Store,
}

pub(crate) async fn proxied(backend: Backend, tweak: impl FnOnce(&mut fs_core::admin::VolumeSpec)) -> Proxied {
    let store = Store::start(backend).await.unwrap();
    let endpoint = store.endpoint().expect("a store behind a proxy speaks HTTP");
    let proxy = match backend {
        Backend::Gcs => StoreProxy::start_rewriting_host(endpoint).await.unwrap(),
        _ => StoreProxy::start(endpoint).await.unwrap(),
    };
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume_on("v", through(store.spec("v"), &proxy.endpoint), tweak).await.unwrap();
    Proxied { meta, proxy, token, _store: store }
}

/// Runs blocking file work off the runtime (the mount's own process answers it).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn eio(r: std::io::Result<()>, what: &str) {
    let err = r.expect_err(&format!("{what} succeeded while the store was down"));
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{what}: {err}");
}

async fn a_failing_store_gives_eio_at_fsync_keeps_the_writes_and_takes_them_when_back(backend: Backend) {
    let Proxied { meta, proxy, token, _store } = proxied(backend, |r| r.block_size = Some(MIB as u32)).await;
    let mut m = Mount::start(&meta, "v", &token, &["store_wait=2"]).await.unwrap();

    // Transient failures are retried with backoff: the writer never sees them.
    let (a, data_a) = (m.path.join("a"), pattern(1, 3 * MIB + 5));
    proxy.next(4, Fault::Unavailable);
    let (p, d) = (a.clone(), data_a.clone());
    blocking(move || std::fs::File::create(&p).and_then(|mut f| f.write_all(&d).and_then(|_| f.sync_all())))
        .await
        .unwrap_or_else(|e| panic!("fsync failed over four 503s: {e}\n{}", m.log_tail(30)));
    proxy.next(3, Fault::Reset);
    let (p, d) = (m.path.join("a2"), data_a.clone());
    blocking(move || std::fs::File::create(&p).and_then(|mut f| f.write_all(&d).and_then(|_| f.sync_all())))
        .await
        .unwrap_or_else(|e| panic!("fsync failed over three reset connections: {e}\n{}", m.log_tail(30)));
    let refused = proxy.requests().iter().filter(|r| !r.forwarded).count();
    assert_eq!(refused, 7, "every injected fault met a request");

    // The store stays down: fsync is EIO (never success), again and again; the writes stay in
    // the mount and read back from it meanwhile.
    proxy.set(Fault::Unavailable);
    let (b, data_b) = (m.path.join("b"), pattern(2, 5 * MIB + 77));
    let f = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&b).unwrap();
    let f = std::sync::Arc::new(f);
    let (ff, d) = (f.clone(), data_b.clone());
    blocking(move || (&*ff).write_all(&d)).await.unwrap();
    for round in 0..2 {
        let ff = f.clone();
        let t = Instant::now();
        eio(blocking(move || ff.sync_all()).await, &format!("fsync {round}"));
        eprintln!("fsync {round} with the store down: EIO after {:?}", t.elapsed());
    }
    let mut back = vec![0u8; data_b.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back == data_b, "the unsaved writes read back differently from the mount");

    // Back: the next fsync stores everything.
    proxy.set(Fault::None);
    let ff = f.clone();
    blocking(move || ff.sync_all()).await.unwrap_or_else(|e| panic!("fsync after the store came back: {e}"));
    drop(f);

    // A close while the store is down: EIO; the mount keeps the writes and stores them itself
    // once the store is back.
    proxy.set(Fault::Unavailable);
    let (c, data_c) = (m.path.join("c"), pattern(3, 2 * MIB + 3));
    let (p, d) = (c.clone(), data_c.clone());
    let closed = blocking(move || {
        let mut f = std::fs::File::create(&p)?;
        f.write_all(&d)?;
        // close(2)'s error, which File's drop would swallow.
        let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
        nix::unistd::close(fd).map_err(std::io::Error::from)
    })
    .await;
    eio(closed, "close");
    // The release that follows the close tries once more (and fails, store_wait later); only
    // then does the store come back, so the mount's own retries have to store the writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !m.log_tail(2000).contains("still unsaved in this mount") {
        assert!(Instant::now() < deadline, "the mount does not say it keeps the writes:\n{}", m.log_tail(40));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.set(Fault::None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !m.log_tail(2000).contains("writes a close could not store are stored now") {
        assert!(Instant::now() < deadline, "the mount did not store the closed file's writes:\n{}", m.log_tail(40));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    m.stop();

    // Every byte, through a fresh mount (nothing of the first one's memory).
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    for (name, data) in [("a", &data_a), ("a2", &data_a), ("b", &data_b), ("c", &data_c)] {
        let got = std::fs::read(m.path.join(name)).unwrap();
        assert!(got == *data, "{name}: {} bytes read back, {} written, or different bytes", got.len(), data.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minio_stopped_mid_write_and_restarted_loses_nothing() {
    e2e::init();
    let mut minio = Minio::start().await.unwrap();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume_on("v", minio.backend_spec("v"), |r| r.block_size = Some(MIB as u32)).await.unwrap();
    let m = Mount::start(&meta, "v", &token, &["store_wait=2"]).await.unwrap();
    let path = m.path.join("f");
    let data = pattern(4, 6 * MIB + 11);
    let f = std::sync::Arc::new(std::fs::File::create(&path).unwrap());
    // Half before the outage (stored), half during it.
    let (ff, d) = (f.clone(), data.clone());
    blocking(move || (&*ff).write_all(&d[..3 * MIB]).and_then(|_| ff.sync_all())).await.unwrap();
    minio.stop();
    let (ff, d) = (f.clone(), data.clone());
    blocking(move || (&*ff).write_all(&d[3 * MIB..])).await.unwrap();
    let ff = f.clone();
    eio(blocking(move || ff.sync_all()).await, "fsync with MinIO stopped");
    minio.restart().await.unwrap();
    let ff = f.clone();
    blocking(move || ff.sync_all()).await.unwrap_or_else(|e| panic!("fsync after MinIO restarted: {e}"));
    drop(f);
    let m2 = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let got = std::fs::read(m2.path.join("f")).unwrap();
    assert!(got == data, "{} bytes read back of {}, or different bytes", got.len(), data.len());
    drop(m);
}
