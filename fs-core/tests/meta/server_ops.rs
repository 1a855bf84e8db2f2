//! The server as an operator sees it: metrics and health endpoints, scheduled GC, certificate
//! renewal, encrypted volumes' opaque names.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use fs_core::testkit::TestServer;
use fs_core::testkit::pb;
use fs_core::testkit::{Session, connect};
use fs_core::tls::{ClientTrust, self_signed};

use crate::fs::Fs;

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints_answer() {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let fs = Fs::new(srv.session("v", &token).await);
    fs.create("f").await.unwrap();
    fs.s.rpc.clone().sync(fs.s.root()).await.unwrap();
    let http = srv.running.http_addr;
    for path in ["/healthz", "/readyz"] {
        let r = http_get(http, path);
        assert!(r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"), "{path}: {r}");
    }
    let m = http_get(http, "/metrics");
    for want in [
        "stratusfs_meta_rpc_seconds_bucket{le=\"0.0001\",op=\"mknod\"}",
        "stratusfs_meta_sessions 1",
        "stratusfs_meta_database_bytes{volume=\"v\"}",
        "stratusfs_meta_syncs{volume=\"v\"}",
        "stratusfs_meta_sync_seconds{volume=\"v\"}",
    ] {
        assert!(m.contains(want), "/metrics lacks {want}:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_collects_garbage_on_its_schedule() {
    let srv = TestServer::start(|c| {
        c.gc_interval = Duration::from_secs(1);
        c.gc_grace = Duration::ZERO;
    })
    .await;
    let (_, token) = srv.volume("v", |r| r.retention_secs = Some(0)).await;
    let fs = Fs::new(srv.session("v", &token).await);
    fs.s.rpc.clone().allocate_blocks(pb::AllocateBlocksRequest { ctx: fs.ctx(), count: 3 }).await.unwrap();
    let mut admin = srv.admin().await;
    let start = Instant::now();
    loop {
        let r = admin.gc(pb::GcRequest { volume: "v".into(), dry_run: true }).await.unwrap().into_inner();
        if r.deleted == 0 && r.kept_grace == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the scheduled collector did not run: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = srv.server().metrics.encode();
    assert!(m.contains("stratusfs_meta_gc_deleted_blocks_total 3"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (cert, key) = self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(&c, &cert).unwrap();
    std::fs::write(&k, &key).unwrap();
    let (cc, kk) = (c.clone(), k.clone());
    let srv = TestServer::start(move |cfg| cfg.tls_cert = Some(fs_core::server::TlsFiles { cert: cc, key: kk })).await;
    let old = ClientTrust { ca_file: Some(c.clone()), fingerprint: None, ..Default::default() };
    let old_copy = dir.path().join("old.crt");
    std::fs::copy(&c, &old_copy).unwrap();
    connect(&srv.addr(), &old, std::time::Duration::ZERO)
        .await
        .expect("the given certificate verifies with its CA file");
    let (cert2, key2) = self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(&k, &key2).unwrap();
    std::fs::write(&c, &cert2).unwrap();
    let new = ClientTrust { ca_file: Some(c.clone()), fingerprint: None, ..Default::default() };
    let start = Instant::now();
    loop {
        // A new connection verifies against the renewed certificate once the server reloaded it.
        if let Ok(ch) = connect(&srv.addr(), &new, std::time::Duration::ZERO).await
            && pb::admin_client::AdminClient::new(ch)
                .list_volumes(pb::Empty {})
                .await
                .map_or_else(|e| e.code() == tonic::Code::Unauthenticated, |_| true)
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(8), "the renewed certificate was not served within 8 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stale = ClientTrust { ca_file: Some(old_copy), fingerprint: None, ..Default::default() };
    let refused = match connect(&srv.addr(), &stale, std::time::Duration::ZERO).await {
        Err(_) => true,
        Ok(ch) => pb::admin_client::AdminClient::new(ch)
            .list_volumes(pb::Empty {})
            .await
            .is_err_and(|e| e.code() != tonic::Code::Unauthenticated),
    };
    assert!(refused, "the old certificate is no longer served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_volumes_take_opaque_names_up_to_271_bytes() {
    let srv = TestServer::start(|_| {}).await;
    let envelope = pb::EncryptionEnvelope {
        wrapped_key: vec![1; 60],
        salt: vec![2; 16],
        kdf: "argon2id".into(),
        ..Default::default()
    };
    let (_, token) = srv.volume("enc", |r| r.encryption = Some(envelope.clone())).await;
    let s = Session::open(srv.channel().await, "enc", &token, "t").await.unwrap();
    assert_eq!(s.reply.volume.as_ref().unwrap().encryption, Some(envelope), "the session receives the envelope");
    let fs = Fs::new(s);
    let mknod = |name: Vec<u8>| {
        let fs = fs.clone();
        async move {
            fs.s.rpc
                .clone()
                .mk_nod(pb::MkNodRequest {
                    ctx: fs.ctx(),
                    parent: 1,
                    name,
                    kind: pb::FileKind::Regular as i32,
                    perm: 0o600,
                    ..Default::default()
                })
                .await
        }
    };
    let opaque: Vec<u8> = (0..271u32).map(|i| (i * 7 % 256) as u8).collect();
    assert!(opaque.contains(&b'/') && opaque.contains(&0));
    mknod(opaque.clone()).await.expect("any 271 bytes are a name on an encrypted volume");
    assert_eq!(fs.lookup(1, &opaque).await.unwrap().kind(), pb::FileKind::Regular);
    let err = mknod(vec![1; 272]).await.unwrap_err();
    assert_eq!(crate::fs::errno(err), libc::ENAMETOOLONG);
}
