//! The CSI node plugin through real mounts: `stratusfs-csi --node` as a process, NodePublish over
//! its socket as kubelet calls it, a metadata server whose certificate names a Service
//! (`meta.team.svc`, reached through `--service-address`), claims made with the admin calls.
//! Two targets of a claim share one session; a read-only publish refuses writes while a
//! read-write one writes; NodeGetVolumeStats is what `df` says inside the target; fsGroup reaches
//! the claim's root; publishes and unpublishes repeat and survive a killed node plugin; every bad
//! input gets the status code the spec asks for and a message naming the problem.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::certs::TestCa;
use e2e::csi::Driver;
use e2e::stratusfs::MetaServer;
use fs_core::admin::{ClaimSpec, Quota};
use stratusfs_csi::csi;
use stratusfs_csi::csi::volume_capability::access_mode::Mode;
use stratusfs_csi::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use tonic::Code;

pub(crate) const HOST: &str = "meta.team.svc";

/// A metadata server with a certificate for [`HOST`] from a CA of its own; the CA's PEM.
pub(crate) async fn server() -> (MetaServer, String, tempfile::TempDir) {
    let ca = TestCa::new("stratusfs test CA").unwrap();
    let cert = ca.issue(HOST, &[HOST], &[]).unwrap();
    let files = tempfile::tempdir().unwrap();
    let (c, k) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    std::fs::write(&c, &cert.cert_pem).unwrap();
    std::fs::write(&k, &cert.key_pem).unwrap();
    let meta = MetaServer::start(&["--tls-cert", c.to_str().unwrap(), "--tls-key", k.to_str().unwrap()]).await.unwrap();
    (meta, ca.cert_pem, files)
}

pub(crate) fn capability(mode: Mode, flags: &[&str], group: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: String::new(),
            mount_flags: flags.iter().map(|s| s.to_string()).collect(),
            volume_mount_group: group.into(),
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// A NodePublish request as kubelet makes it from a PV.
pub(crate) fn publish(
    volume_id: &str,
    source: &str,
    target: &Path,
    secrets: &[(&str, &str)],
    cap: csi::VolumeCapability,
    readonly: bool,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap),
        readonly,
        secrets: secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
        volume_context: [
            ("source".to_string(), source.to_string()),
            ("csi.storage.k8s.io/pod.name".to_string(), "app-0".to_string()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

fn stats_request(volume_id: &str, path: &Path) -> csi::NodeGetVolumeStatsRequest {
    csi::NodeGetVolumeStatsRequest {
        volume_id: volume_id.into(),
        volume_path: path.display().to_string(),
        ..Default::default()
    }
}

pub(crate) fn unpublish(volume_id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest { volume_id: volume_id.into(), target_path: target.display().to_string() }
}

/// The (source) FUSE mounts of this volume on the machine: one line per session.
pub(crate) fn sessions_of(source_prefix: &str) -> usize {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .filter(|l| l.contains(" - fuse") && l.contains(source_prefix) && l.contains("/state/sessions/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_publishes_share_sessions_refuse_what_they_must_and_survive_a_restarted_plugin() {
    e2e::init();
    let (meta, ca_pem, _files) = server().await;
    meta.volume("vol", |_| {}).await.unwrap();
    let mut admin = meta.admin().await.unwrap();
    let claim = |name: &str| ClaimSpec {
        path: format!("/{name}"),
        quota: Quota { bytes: 64 << 20, inodes: 500 },
        mode: 0o777,
        ..Default::default()
    };
    let a = admin.create_claim("vol", &claim("pvc-a")).await.unwrap();
    let b = admin.create_claim("vol", &claim("pvc-b")).await.unwrap();
    let port = meta.addr.rsplit_once(':').unwrap().1;
    let map = format!("--service-address={HOST}:7480=127.0.0.1:{port}");
    let metrics_addr = format!("127.0.0.1:{}", e2e::service::free_port().unwrap());
    let metrics_flag = format!("--metrics-listen={metrics_addr}");
    let mut driver = Driver::start(&["--node", &map, &metrics_flag], &[]).await.unwrap();
    let mut node = driver.node().await.unwrap();
    let src = |claim: &str| format!("stratusfs://{HOST}:7480/vol/{claim}");
    // A session's mount names the address it dials (the Service's, mapped here).
    let dialled = |claim: &str| format!("stratusfs://127.0.0.1:{port}/vol/{claim}");
    let (ta, tb) = (a.token.token.as_str(), b.token.token.as_str());
    let secrets_a = [("token", ta), ("ca.crt", ca_pem.as_str())];
    let rw = || capability(Mode::MultiNodeMultiWriter, &[], "");
    let targets = driver.dir().join("pods");
    std::fs::create_dir(&targets).unwrap();
    let t = |n: &str| targets.join(n);

    // The first publish of a claim starts its session; the second shares it.
    let started = Instant::now();
    node.node_publish_volume(publish("team/vol/pvc-a", &src("pvc-a"), &t("one"), &secrets_a, rw(), false))
        .await
        .unwrap();
    let first = started.elapsed();
    let started = Instant::now();
    node.node_publish_volume(publish("team/vol/pvc-a", &src("pvc-a"), &t("two"), &secrets_a, rw(), false))
        .await
        .unwrap();
    eprintln!("publish: first target {first:?} (a new session), second {:?} (shared)", started.elapsed());
    std::fs::write(t("one").join("hello"), b"from one").unwrap();
    assert_eq!(std::fs::read(t("two").join("hello")).unwrap(), b"from one");
    assert_eq!(sessions_of(&dialled("pvc-a")), 1, "two targets of one claim share one session");
    let usage = admin.usage("vol").await.unwrap();
    assert_eq!(usage.sessions.iter().filter(|s| s.token_id == a.token.id).count(), 1, "{:?}", usage.sessions);
    // Publishing the same target again is fine (kubelet retries).
    node.node_publish_volume(publish("team/vol/pvc-a", &src("pvc-a"), &t("one"), &secrets_a, rw(), false))
        .await
        .unwrap();

    // Read-only: its own session, which refuses writes, while the read-write one writes.
    node.node_publish_volume(publish("team/vol/pvc-a", &src("pvc-a"), &t("ro"), &secrets_a, rw(), true)).await.unwrap();
    let ro_cap = capability(Mode::MultiNodeReaderOnly, &[], "");
    node.node_publish_volume(publish("team/vol/pvc-a", &src("pvc-a"), &t("ro2"), &secrets_a, ro_cap, false))
        .await
        .unwrap();
    assert_eq!(sessions_of(&dialled("pvc-a")), 2, "a read-only publish never shares a read-write session");
    let refused = std::fs::write(t("ro").join("x"), b"x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");
    assert_eq!(std::fs::write(t("ro2").join("x"), b"x").unwrap_err().raw_os_error(), Some(libc::EROFS));
    std::fs::write(t("two").join("written"), b"rw").unwrap();
    assert_eq!(std::fs::read(t("ro").join("hello")).unwrap(), b"from one");

    // NodeGetVolumeStats says what df says inside the target: the claim's quota and use.
    std::fs::write(t("one").join("big"), vec![7u8; 3 << 20]).unwrap();
    nix::unistd::sync();
    let stats = node.node_get_volume_stats(stats_request("team/vol/pvc-a", &t("one"))).await.unwrap().into_inner();
    let df = nix::sys::statvfs::statvfs(&t("one")).unwrap();
    let bytes = stats.usage.iter().find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32).unwrap();
    let inodes = stats.usage.iter().find(|u| u.unit == csi::volume_usage::Unit::Inodes as i32).unwrap();
    let frsize = df.fragment_size() as i64;
    assert_eq!(bytes.total, df.blocks() as i64 * frsize);
    assert_eq!(bytes.total, 64 << 20, "the claim's quota is its size");
    assert_eq!(bytes.used, (df.blocks() - df.blocks_free()) as i64 * frsize);
    assert!(bytes.used >= 3 << 20, "{bytes:?}");
    assert_eq!((inodes.total, inodes.used), (500, (df.files() - df.files_free()) as i64));
    assert!(!stats.volume_condition.unwrap().abnormal);
    eprintln!("NodeGetVolumeStats: {bytes:?} {inodes:?}; df: {} blocks of {frsize}", df.blocks());

    // Metrics per published volume: its sessions, targets, requests and bytes.
    let text = e2e::service::http_client()
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metric = |name: &str| -> f64 {
        let prefix = format!("stratusfs_csi_{name}{{volume_id=\"team/vol/pvc-a\"}} ");
        let found: Vec<f64> =
            text.lines().filter_map(|l| l.strip_prefix(&prefix)).filter_map(|v| v.parse().ok()).collect();
        assert!(!found.is_empty(), "no {prefix} in\n{text}");
        found.iter().sum()
    };
    assert_eq!(metric("published_targets"), 4.0, "{text}");
    assert_eq!(metric("sessions"), 2.0);
    assert!(metric("written_bytes") >= (3 << 20) as f64, "{text}");
    assert!(metric("read_bytes") >= 8.0 && metric("requests") > 10.0, "{text}");

    // fsGroup (VOLUME_MOUNT_GROUP): the claim's root belongs to the group, setgid, group-writable.
    let group = capability(Mode::SingleNodeWriter, &[], "4321");
    node.node_publish_volume(publish(
        "team/vol/pvc-b",
        &src("pvc-b"),
        &t("grp"),
        &[("token", tb), ("ca.crt", &ca_pem)],
        group,
        false,
    ))
    .await
    .unwrap();
    let m = std::fs::metadata(t("grp")).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o2070), (4321, 0o2070), "mode {:o}", m.mode());
    std::fs::write(t("grp").join("f"), b"x").unwrap();
    assert_eq!(std::fs::metadata(t("grp").join("f")).unwrap().gid(), 4321, "new files take the group");

    // An encrypted volume: the Secret's encryptionSecret opens it; without it the publish says why.
    let enc = "correct horse battery staple";
    meta.volume("sealed", |v| v.encryption = Some(fs_core::crypto::Secret::new(enc.as_bytes().to_vec()).unwrap()))
        .await
        .unwrap();
    let sc = admin.create_claim("sealed", &claim("pvc-s")).await.unwrap();
    let sealed_src = format!("stratusfs://{HOST}:7480/sealed/pvc-s");
    let sealed_secrets = [("token", sc.token.token.as_str()), ("ca.crt", ca_pem.as_str()), ("encryptionSecret", enc)];
    node.node_publish_volume(publish("team/sealed/pvc-s", &sealed_src, &t("sealed"), &sealed_secrets, rw(), false))
        .await
        .unwrap();
    std::fs::write(t("sealed").join("plain"), b"only the pod sees this").unwrap();
    assert_eq!(std::fs::read(t("sealed").join("plain")).unwrap(), b"only the pod sees this");
    let e = node
        .node_publish_volume(publish("team/sealed/pvc-s", &sealed_src, &t("nokey"), &sealed_secrets[..2], rw(), false))
        .await
        .unwrap_err();
    assert!(e.message().contains("encrypt"), "a publish without encryptionSecret: {e:?}");
    node.node_unpublish_volume(unpublish("team/sealed/pvc-s", &t("sealed"))).await.unwrap();
    let secret_files = e2e::files_under(&driver.dir().join("state"));
    assert!(
        secret_files.iter().all(|f| !f.ends_with("encryption-secret")),
        "the secret file went with its session: {secret_files:?}"
    );

    // Bad input: the code the spec asks for, and a message naming the problem.
    let bad_target = t("bad");
    let cases: Vec<(&str, csi::NodePublishVolumeRequest, Code, &str)> = vec![
        (
            "no token",
            publish("v", &src("pvc-a"), &bad_target, &[("ca.crt", &ca_pem)], rw(), false),
            Code::InvalidArgument,
            "token",
        ),
        (
            "a wrong token",
            publish(
                "v",
                &src("pvc-a"),
                &bad_target,
                &[("token", "00000000-0000-0000-0000-000000000000"), ("ca.crt", &ca_pem)],
                rw(),
                false,
            ),
            Code::PermissionDenied,
            "unknown or revoked token",
        ),
        (
            "another claim's token",
            publish("v", &src("pvc-a"), &bad_target, &[("token", tb), ("ca.crt", &ca_pem)], rw(), false),
            Code::PermissionDenied,
            "limited to /pvc-b",
        ),
        (
            "a source that does not parse",
            publish("v", "s3://bucket/x", &bad_target, &secrets_a, rw(), false),
            Code::InvalidArgument,
            "stratusfs://HOST:PORT/VOLUME",
        ),
        (
            "an unknown volume",
            publish("v", &format!("stratusfs://{HOST}:7480/nosuch"), &bad_target, &secrets_a, rw(), false),
            Code::NotFound,
            "nosuch",
        ),
        (
            "an unknown mount option",
            publish(
                "v",
                &src("pvc-a"),
                &bad_target,
                &secrets_a,
                capability(Mode::SingleNodeWriter, &["noatime,turbo=1"], ""),
                false,
            ),
            Code::InvalidArgument,
            "turbo",
        ),
        (
            "a driver's own option",
            publish(
                "v",
                &src("pvc-a"),
                &bad_target,
                &secrets_a,
                capability(Mode::SingleNodeWriter, &["token_file=/etc/x"], ""),
                false,
            ),
            Code::InvalidArgument,
            "set by the driver",
        ),
        (
            "a target that is not a directory",
            publish("v", &src("pvc-a"), &t("one").join("hello"), &secrets_a, rw(), false),
            Code::InvalidArgument,
            "not a directory",
        ),
        (
            "no target",
            publish("v", &src("pvc-a"), Path::new(""), &secrets_a, rw(), false),
            Code::InvalidArgument,
            "target_path",
        ),
        (
            "no volume id",
            publish("", &src("pvc-a"), &bad_target, &secrets_a, rw(), false),
            Code::InvalidArgument,
            "volume_id",
        ),
    ];
    for (what, req, code, says) in cases {
        let e = node.node_publish_volume(req).await.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(e.message().contains(says), "{what}: the message names the problem ({says}): {}", e.message());
        assert!(!e2e::stratusfs::is_mounted(&bad_target), "{what} left a mount");
    }
    let mut at_time = publish("v", &src("pvc-a"), &bad_target, &secrets_a, rw(), false);
    at_time.volume_context.insert("atTime".into(), "2026-12-01T00:00:00Z".into());
    let e = node.node_publish_volume(at_time).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("point-in-time"), "{e:?}");
    let mut unknown_attr = publish("v", &src("pvc-a"), &bad_target, &secrets_a, rw(), false);
    unknown_attr.volume_context.insert("cacheSize".into(), "1".into());
    let e = node.node_publish_volume(unknown_attr).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("cacheSize"), "{e:?}");
    let e = node.node_get_volume_stats(stats_request("v", &t("nowhere"))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Unpublish: the last target of a session ends it; twice is fine.
    node.node_unpublish_volume(unpublish("team/vol/pvc-a", &t("ro"))).await.unwrap();
    node.node_unpublish_volume(unpublish("team/vol/pvc-a", &t("ro"))).await.unwrap();
    assert!(!t("ro").exists(), "the target is removed");
    assert_eq!(sessions_of(&dialled("pvc-a")), 2, "ro2 still holds the read-only session");
    node.node_unpublish_volume(unpublish("team/vol/pvc-a", &t("ro2"))).await.unwrap();
    assert_eq!(sessions_of(&dialled("pvc-a")), 1);

    // A killed node plugin: its targets go stale (ENOTCONN); the next one republishes onto them and
    // unpublishes them.
    driver.kill9();
    // The kernel answers from its attribute cache for up to attr_ttl; then the mount is stale.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(t("two")).err().and_then(|e| e.raw_os_error()) != Some(libc::ENOTCONN) {
        assert!(Instant::now() < deadline, "the target did not go stale after the plugin was killed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    driver.restart().await.unwrap();
    let mut node = driver.node().await.unwrap();
    assert_eq!(sessions_of(&dialled("pvc-a")), 0, "the old sessions' mounts were detached at start");
    let stats = node.node_get_volume_stats(stats_request("team/vol/pvc-a", &t("two"))).await.unwrap().into_inner();
    assert!(stats.volume_condition.as_ref().unwrap().abnormal, "a stale target is reported abnormal: {stats:?}");
    node.node_publish_volume(publish("team/vol/pvc-a", &src("pvc-a"), &t("one"), &secrets_a, rw(), false))
        .await
        .unwrap();
    assert_eq!(std::fs::read(t("one").join("written")).unwrap(), b"rw", "republished after the crash");
    node.node_unpublish_volume(unpublish("team/vol/pvc-a", &t("two"))).await.unwrap();
    assert!(!t("two").exists());
    for target in ["one", "grp"] {
        node.node_unpublish_volume(unpublish("team/vol/x", &t(target))).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while sessions_of(&format!("stratusfs://127.0.0.1:{port}/vol")) > 0 {
        assert!(Instant::now() < deadline, "sessions left after every target was unpublished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(e2e::csi::mounts_under(driver.dir()).is_empty(), "{:?}", e2e::csi::mounts_under(driver.dir()));
}
