//! A Volume's whole life on the real control plane, as a user sees it with kubectl: the chart's
//! operator (its pod template, its ServiceAccount's token) and the metadata StatefulSet's pod
//! template, both run by the pod-template runner, MinIO as the store. The Volume turns Ready only
//! after a TLS admin call; a mount through its `<vol>-mount` Secret shows up in its usage and
//! sessions; a quota change reaches the server; a stopped metadata server turns it not Ready and a
//! restarted one Ready again; a BlockStore in use cannot go; deleting under Retain keeps blocks
//! and database (a Volume of the same name adopts them: the file reads back), under Delete
//! removes both.

use std::time::{Duration, Instant};

use base64::Engine;
use e2e::kube::ControlPlane;
use e2e::minio::Minio;
use e2e::pods::{Pod, RunOptions};
use e2e::service::free_port;
use e2e::stratusfs::Mount;
use fs_core::{AdminClient, ClientTrust};
use futures::TryStreamExt;

use crate::kubernetes::{apply_ok as apply, chart_operator, helm_install, kubectl, kubectl_ok, secret_value_in};
use crate::operator::{block_store, condition_of, ready_of, secret, version_of};

fn volume(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: stratusfs.io/v1alpha1\nkind: Volume\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  blockStore: store\n{extra}"
    )
}

/// A Secret's value, decoded.
fn secret_value(cp: &ControlPlane, name: &str, key: &str) -> String {
    secret_value_in(cp, "default", name, key)
}

/// The SHA-256 fingerprint of the certificate in Secret `<vol>-meta-tls`.
fn server_fingerprint(cp: &ControlPlane, vol: &str) -> String {
    let pem = secret_value(cp, &format!("{vol}-meta-tls"), "tls.crt");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    fs_core::tls::fingerprint(&base64::engine::general_purpose::STANDARD.decode(body).unwrap())
}

/// `.status` of Volume `name`.
fn status(cp: &ControlPlane, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&kubectl_ok(cp, &["get", "svol", name, "-o", "json"])).unwrap();
    v["status"].clone()
}

/// Runs the metadata StatefulSet of Volume `vol` once the operator has made it, its gRPC port at `port`.
async fn stand_in(cp: &ControlPlane, root: &std::path::Path, vol: &str, port: u16) -> Pod {
    version_of(cp, "statefulset", &format!("{vol}-meta")).await;
    let o = RunOptions { ports: &[(7480, port)], ..Default::default() };
    Pod::run(cp, "default", &format!("statefulset/{vol}-meta"), root, o).await.unwrap()
}

/// How many objects the store holds under `team-a/<uuid>/`.
async fn objects_of(minio: &Minio, uuid: &str) -> usize {
    let store = fs_core::blockstore::open_backend(&minio.backend_spec("team-a")).unwrap();
    let listed: Vec<_> = store.list(Some(&object_store::path::Path::from(uuid))).try_collect().await.unwrap();
    listed.len()
}

/// Waits until `kind/name` no longer exists.
async fn gone(cp: &ControlPlane, kind: &str, name: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while kubectl(cp, &["get", kind, name]).0 {
        assert!(Instant::now() < deadline, "{kind}/{name} still exists after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_turns_ready_serves_mounts_and_goes_as_its_deletion_policy_says() {
    e2e::init();
    e2e::stratusfs::install_mount_helpers().unwrap();
    let (cp, minio) = (ControlPlane::start().await.unwrap(), Minio::start().await.unwrap());
    helm_install(&cp);
    let root = tempfile::tempdir().unwrap();
    let (keep_port, drop_port) = (free_port().unwrap(), free_port().unwrap());
    let map = |vol: &str, port: u16| format!("--service-address={vol}-meta.default.svc:7480=127.0.0.1:{port}");
    let (keep_map, drop_map) = (map("keep", keep_port), map("drop", drop_port));
    let _operator = chart_operator(&cp, root.path(), &[&keep_map, &drop_map]).await;
    apply(&cp, "secret", &secret("minio", &minio.access_key, &minio.secret_key));
    apply(&cp, "store", &block_store("store", &minio.bucket, &minio.endpoint, "minio"));
    assert_eq!(ready_of(&cp, "store", None).await.0, "True");

    apply(&cp, "keep", &volume("keep", "  quota: {bytes: 1Gi, inodes: 1000}\n"));
    apply(&cp, "drop", &volume("drop", "  deletionPolicy: Delete\n"));
    // Not Ready while nothing serves it, and the condition says what it waits for.
    let (s, r, m) = condition_of(&cp, "svol", "keep", "MetadataReady", None, Duration::from_secs(60)).await;
    assert_eq!((s.as_str(), r.as_str()), ("False", "Unreachable"), "{m}");
    assert!(m.contains("keep-meta.default.svc:7480"), "{m}");

    let started = Instant::now();
    let mut keep_pod = stand_in(&cp, root.path(), "keep", keep_port).await;
    let _drop_pod = stand_in(&cp, root.path(), "drop", drop_port).await;
    let (s, r, m) = condition_of(&cp, "svol", "keep", "Ready", Some("True"), Duration::from_secs(60)).await;
    eprintln!("Volume keep Ready {:?} after its metadata server started: {r}: {m}", started.elapsed());
    assert_eq!(s, "True");
    condition_of(&cp, "svol", "drop", "Ready", Some("True"), Duration::from_secs(60)).await;
    let st = status(&cp, "keep");
    assert_eq!(st["phase"], "Ready");
    assert_eq!(st["endpoint"], "stratusfs://keep-meta.default.svc:7480/keep");
    let keep_uuid = st["volumeId"].as_str().unwrap().to_string();
    assert_eq!(keep_uuid.len(), 36, "{st}");

    // The server, as the operator reaches it: TLS verified for the Service's name with the CA.
    let trust = ClientTrust {
        ca_pem: Some(secret_value(&cp, "keep-ca", "ca.crt")),
        server_name: Some("keep-meta.default.svc".into()),
        ..Default::default()
    };
    let mut admin =
        AdminClient::connect(&keep_pod.address(7480), &trust, &secret_value(&cp, "keep-admin", "token")).await.unwrap();
    let on_server = admin.volume("keep").await.unwrap().unwrap();
    assert_eq!(
        (on_server.uuid.as_str(), on_server.quota.bytes, on_server.quota.inodes),
        (keep_uuid.as_str(), 1 << 30, 1000)
    );
    let wrong_name = ClientTrust { server_name: Some("drop-meta.default.svc".into()), ..trust.clone() };
    assert!(
        AdminClient::connect(&keep_pod.address(7480), &wrong_name, "x").await.is_err(),
        "the certificate is for keep-meta only"
    );

    // The mount Secrets; a mount through <vol>-mount writes, and usage and sessions show it.
    assert_eq!(secret_value(&cp, "keep-mount", "source"), "stratusfs://keep-meta.default.svc:7480/keep");
    assert!(secret_value(&cp, "keep-mount-ro", "ca.crt").contains("BEGIN CERTIFICATE"));
    let fingerprint = server_fingerprint(&cp, "keep");
    let token = secret_value(&cp, "keep-mount", "token");
    let mount = Mount::start_trusting(&keep_pod.address(7480), "keep", &token, &fingerprint, &[]).await.unwrap();
    let data: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i * 7 % 251) as u8).collect();
    std::fs::write(mount.path.join("file"), &data).unwrap();
    let ro = Mount::start_trusting(
        &keep_pod.address(7480),
        "keep",
        &secret_value(&cp, "keep-mount-ro", "token"),
        &fingerprint,
        &[],
    )
    .await
    .unwrap();
    let refused = std::fs::write(ro.path.join("other"), b"x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "the read-only token: {refused}");
    let deadline = Instant::now() + Duration::from_secs(35);
    loop {
        let st = status(&cp, "keep");
        if st["usage"]["bytes"].as_i64() >= Some(1 << 20) && st["sessions"].as_i64() == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "usage and sessions not shown within 35 s: {st}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let table = kubectl_ok(&cp, &["get", "svol", "keep"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!((row[1], row[2], row[4]), ("True", "store", "2"), "{table}");
    drop(ro);

    // A quota change reaches the server.
    kubectl_ok(&cp, &["patch", "svol", "keep", "--type=merge", "-p", r#"{"spec":{"quota":{"bytes":"2Gi"}}}"#]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin.volume("keep").await.unwrap().unwrap().quota.bytes != 2 << 30 {
        assert!(Instant::now() < deadline, "the new quota did not reach the server within 30 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(mount);

    // A mount Secret deleted is made again with a new token; the old token no longer mounts.
    kubectl_ok(&cp, &["delete", "secret", "keep-mount"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_token = loop {
        if kubectl(&cp, &["get", "secret", "keep-mount"]).0 {
            break secret_value(&cp, "keep-mount", "token");
        }
        assert!(Instant::now() < deadline, "keep-mount was not made again within 30 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_ne!(new_token, token);
    let old = Mount::start_trusting(&keep_pod.address(7480), "keep", &token, &fingerprint, &[]).await;
    assert!(old.is_err(), "the replaced Secret's token still mounts");
    let fresh = Mount::start_trusting(&keep_pod.address(7480), "keep", &new_token, &fingerprint, &[]).await.unwrap();
    assert_eq!(std::fs::read(fresh.path.join("file")).unwrap(), data);
    drop(fresh);

    // The metadata server stops: not Ready within 30 s, saying why; back, Ready again.
    keep_pod.stop();
    let stopped = Instant::now();
    let (s, r, m) = condition_of(&cp, "svol", "keep", "Ready", Some("False"), Duration::from_secs(30)).await;
    eprintln!("Volume keep Ready={s} {:?} after its metadata server stopped: {r}: {m}", stopped.elapsed());
    assert_eq!(r, "Unreachable", "{m}");
    assert_eq!(status(&cp, "keep")["phase"], "Degraded");
    keep_pod.start().await.unwrap();
    let restarted = Instant::now();
    condition_of(&cp, "svol", "keep", "Ready", Some("True"), Duration::from_secs(30)).await;
    eprintln!("Volume keep Ready again {:?} after its metadata server came back", restarted.elapsed());

    // A BlockStore in use is held, its condition naming the Volumes.
    kubectl_ok(&cp, &["delete", "bs", "store", "--wait=false"]);
    let (_, r, m) = condition_of(&cp, "bs", "store", "InUse", Some("True"), Duration::from_secs(30)).await;
    assert!(r == "VolumesExist" && m.contains("drop") && m.contains("keep"), "{r}: {m}");

    // Delete: the blocks and the database go.
    let drop_uuid = status(&cp, "drop")["volumeId"].as_str().unwrap().to_string();
    let drop_token = secret_value(&cp, "drop-mount", "token");
    let m = Mount::start_trusting(&_drop_pod.address(7480), "drop", &drop_token, &server_fingerprint(&cp, "drop"), &[])
        .await
        .unwrap();
    std::fs::write(m.path.join("file"), &data).unwrap();
    drop(m);
    assert!(objects_of(&minio, &drop_uuid).await > 0, "the Delete volume's blocks were written");
    kubectl_ok(&cp, &["delete", "svol", "drop", "--wait=false"]);
    gone(&cp, "svol", "drop", Duration::from_secs(60)).await;
    assert_eq!(objects_of(&minio, &drop_uuid).await, 0, "deletionPolicy Delete left objects");
    gone(&cp, "pvc", "data-drop-meta-0", Duration::from_secs(90)).await;

    // Retain: the blocks and the PVC stay; the BlockStore is released once both Volumes are gone.
    kubectl_ok(&cp, &["delete", "svol", "keep", "--wait=false"]);
    gone(&cp, "svol", "keep", Duration::from_secs(60)).await;
    gone(&cp, "bs", "store", Duration::from_secs(60)).await;
    assert!(objects_of(&minio, &keep_uuid).await > 0, "deletionPolicy Retain deleted objects");
    assert!(kubectl(&cp, &["get", "pvc", "data-keep-meta-0"]).0, "deletionPolicy Retain deleted the PVC");
    gone(&cp, "secret", "keep-mount", Duration::from_secs(60)).await;
    drop(keep_pod);

    // The same Volume again adopts them: the same volume id, the file reads back.
    apply(&cp, "store-again", &block_store("store", &minio.bucket, &minio.endpoint, "minio"));
    apply(&cp, "keep-again", &volume("keep", ""));
    let keep_pod = stand_in(&cp, root.path(), "keep", keep_port).await;
    condition_of(&cp, "svol", "keep", "Ready", Some("True"), Duration::from_secs(60)).await;
    assert_eq!(status(&cp, "keep")["volumeId"].as_str(), Some(keep_uuid.as_str()), "adopted");
    let token = secret_value(&cp, "keep-mount", "token");
    let mount = Mount::start_trusting(&keep_pod.address(7480), "keep", &token, &server_fingerprint(&cp, "keep"), &[])
        .await
        .unwrap();
    assert!(std::fs::read(mount.path.join("file")).unwrap() == data, "the retained file reads back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_follow_their_secrets_and_never_build_over_a_lost_database() {
    e2e::init();
    e2e::stratusfs::install_mount_helpers().unwrap();
    let (cp, minio) = (ControlPlane::start().await.unwrap(), Minio::start().await.unwrap());
    helm_install(&cp);
    let root = tempfile::tempdir().unwrap();
    let (sec_port, lost_port) = (free_port().unwrap(), free_port().unwrap());
    let map = |vol: &str, port: u16| format!("--service-address={vol}-meta.default.svc:7480=127.0.0.1:{port}");
    let _operator = chart_operator(&cp, root.path(), &[&map("sec", sec_port), &map("lost", lost_port)]).await;
    apply(&cp, "secret", &secret("minio", &minio.access_key, &minio.secret_key));
    apply(&cp, "store", &block_store("store", &minio.bucket, &minio.endpoint, "minio"));
    let enc = |data: &str| {
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: enc, namespace: default}}\nstringData: {{{data}}}\n")
    };
    apply(&cp, "enc", &enc("secret: first-secret"));
    apply(&cp, "sec", &volume("sec", "  encryption: {secretRef: {name: enc}}\n"));
    apply(&cp, "lost", &volume("lost", ""));
    let sec_pod = stand_in(&cp, root.path(), "sec", sec_port).await;
    let mut lost_pod = stand_in(&cp, root.path(), "lost", lost_port).await;
    condition_of(&cp, "svol", "sec", "Ready", Some("True"), Duration::from_secs(60)).await;
    let trust = |vol: &str| ClientTrust {
        ca_pem: Some(secret_value(&cp, &format!("{vol}-ca"), "ca.crt")),
        server_name: Some(format!("{vol}-meta.default.svc")),
        ..Default::default()
    };
    let mut admin =
        AdminClient::connect(&sec_pod.address(7480), &trust("sec"), &secret_value(&cp, "sec-admin", "token"))
            .await
            .unwrap();
    assert!(admin.volume("sec").await.unwrap().unwrap().encrypted, "made encrypted from the Secret");

    // A mount with the secret writes; the server never saw it.
    let dir = tempfile::tempdir().unwrap();
    let secret_file = |name: &str, value: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, value).unwrap();
        format!("encryption_secret_file={}", p.display())
    };
    let (fp, token) = (server_fingerprint(&cp, "sec"), secret_value(&cp, "sec-mount", "token"));
    let first = secret_file("first", "first-secret");
    let m = Mount::start_trusting(&sec_pod.address(7480), "sec", &token, &fp, &[&first]).await.unwrap();
    std::fs::write(m.path.join("note"), b"sealed words").unwrap();
    drop(m);

    // Rekey: the Secret gets a new secret and the old one as previousSecret.
    apply(&cp, "enc", &enc("secret: second-secret, previousSecret: first-secret"));
    let started = Instant::now();
    let (_, r, msg) = condition_of(&cp, "svol", "sec", "Rekeyed", Some("True"), Duration::from_secs(40)).await;
    eprintln!("rekeyed {:?} after the Secret changed: {r}: {msg}", started.elapsed());
    let key = |s: &str| fs_core::crypto::Secret::new(s.as_bytes().to_vec()).unwrap();
    assert!(admin.secret_opens("sec", &key("second-secret")).await.unwrap());
    assert!(!admin.secret_opens("sec", &key("first-secret")).await.unwrap());
    let second = secret_file("second", "second-secret");
    let m = Mount::start_trusting(&sec_pod.address(7480), "sec", &token, &fp, &[&second]).await.unwrap();
    assert_eq!(std::fs::read(m.path.join("note")).unwrap(), b"sealed words");
    drop(m);

    // The server certificate is issued again once its renewal time has come (set in the past here).
    let cert = secret_value(&cp, "sec-meta-tls", "tls.crt");
    kubectl_ok(
        &cp,
        &["annotate", "secret", "sec-meta-tls", "stratusfs.io/renew-after=2020-01-01T00:00:00Z", "--overwrite"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while secret_value(&cp, "sec-meta-tls", "tls.crt") == cert {
        assert!(Instant::now() < deadline, "the certificate was not issued again within 30 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let after = kubectl_ok(
        &cp,
        &["get", "secret", "sec-meta-tls", "-o", "jsonpath={.metadata.annotations.stratusfs\\.io/renew-after}"],
    );
    assert!(after.as_str() > "2027", "the next renewal is in the future: {after}");
    let events = kubectl_ok(&cp, &["get", "events", "--field-selector", "involvedObject.name=sec", "-o", "json"]);
    assert!(events.contains("CertificateRenewed"), "{events}");

    // New credentials reach the volume record only once they pass a probe: a wrong key is
    // refused, saying so, and the volume and a live mount keep the working ones.
    let writer = Mount::start_trusting(&sec_pod.address(7480), "sec", &token, &fp, &[&second]).await.unwrap();
    for f in ["one", "two"] {
        std::fs::write(writer.path.join(f), vec![7u8; 300_000]).unwrap();
    }
    drop(writer);
    let live =
        Mount::start_trusting(&sec_pod.address(7480), "sec", &token, &fp, &[&second, "store_wait=2"]).await.unwrap();
    let switched = |n: usize| {
        let log = std::fs::read_to_string(live.log_path()).unwrap_or_default();
        log.matches("block-store spec changed on the server").count() >= n
    };
    let record_key = async |admin: &mut AdminClient| match admin.volume("sec").await.unwrap().unwrap().block_store {
        fs_core::BackendSpec::S3 { secret_access_key, .. } => (secret_access_key, ()),
        other => panic!("{other:?}"),
    };
    apply(&cp, "rotated", &secret("minio", &minio.access_key, "a-rotated-key"));
    let (_, r, m) = condition_of(&cp, "svol", "sec", "MetadataReady", Some("False"), Duration::from_secs(60)).await;
    assert!(r == "CredentialsRejected" && m.contains("keeps the ones it has"), "{r}: {m}");
    assert_eq!(record_key(&mut admin).await.0.as_deref(), Some(minio.secret_key.as_str()), "the volume record");
    assert_eq!(std::fs::read(live.path.join("one")).unwrap(), vec![7u8; 300_000], "the live mount reads on");
    apply(&cp, "secret", &secret("minio", &minio.access_key, &minio.secret_key));
    condition_of(&cp, "svol", "sec", "Ready", Some("True"), Duration::from_secs(60)).await;
    // A live mount follows its volume record's spec without a remount (the record changed by
    // the admin call the operator makes after a probe): a wrong key makes its next read of an
    // uncached block fail, the right one again succeed.
    let (right, _) = record_key(&mut admin).await;
    let record = admin.volume("sec").await.unwrap().unwrap().block_store;
    let with_key = |key: &str| {
        let mut spec = record.clone();
        if let fs_core::BackendSpec::S3 { secret_access_key, .. } = &mut spec {
            *secret_access_key = Some(key.to_string());
        }
        fs_core::admin::VolumeUpdate { block_store: Some(spec), ..Default::default() }
    };
    let started = Instant::now();
    admin.update_volume("sec", &with_key("a-rotated-key")).await.unwrap();
    while !switched(1) {
        assert!(started.elapsed() < Duration::from_secs(60), "the live mount did not take the new spec");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("a live mount took its record's new spec {:?} after it changed", started.elapsed());
    let e = std::fs::read(live.path.join("two")).map(|b| b.len()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "a read with the wrong key: {e}");
    admin.update_volume("sec", &with_key(right.as_deref().unwrap())).await.unwrap();
    while !switched(2) {
        assert!(started.elapsed() < Duration::from_secs(120), "the live mount did not take the restored spec");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(std::fs::read(live.path.join("two")).unwrap(), vec![7u8; 300_000], "after the right key is back");
    drop(live);

    // A lost database: the server comes back empty. The Volume says so and nothing is created.
    condition_of(&cp, "svol", "lost", "Ready", Some("True"), Duration::from_secs(60)).await;
    lost_pod.stop();
    let uid = kubectl_ok(&cp, &["get", "pvc", "data-lost-meta-0", "-o", "jsonpath={.metadata.uid}"]);
    std::fs::remove_dir_all(root.path().join("pvc").join(uid.trim())).unwrap();
    std::fs::create_dir(root.path().join("pvc").join(uid.trim())).unwrap();
    lost_pod.start().await.unwrap();
    let (_, r, msg) = condition_of(&cp, "svol", "lost", "MetadataReady", Some("False"), Duration::from_secs(40)).await;
    eprintln!("a lost database: {r}: {msg}");
    assert!(r == "MetadataLost" && msg.contains("data-lost-meta-0"), "{r}: {msg}");
    let mut admin =
        AdminClient::connect(&lost_pod.address(7480), &trust("lost"), &secret_value(&cp, "lost-admin", "token"))
            .await
            .unwrap();
    assert!(admin.volumes().await.unwrap().is_empty(), "the operator created a volume over the lost one");
    assert_eq!(status(&cp, "lost")["phase"], "Degraded");

    // Deleting it under Delete is held: its blocks are the only copy left of a lost database.
    kubectl_ok(&cp, &["patch", "svol", "lost", "--type=merge", "-p", r#"{"spec":{"deletionPolicy":"Delete"}}"#]);
    kubectl_ok(&cp, &["delete", "svol", "lost", "--wait=false"]);
    let (_, r, m) = condition_of(&cp, "svol", "lost", "DeletionHeld", Some("True"), Duration::from_secs(30)).await;
    assert!(r == "MetadataLost" && m.contains("Retain"), "{r}: {m}");
    kubectl_ok(&cp, &["patch", "svol", "lost", "--type=merge", "-p", r#"{"spec":{"deletionPolicy":"Retain"}}"#]);
    gone(&cp, "svol", "lost", Duration::from_secs(60)).await;
    apply(&cp, "lost-again", &volume("lost", ""));

    // Growing the database's storage: the StatefulSet keeps its claim template (immutable) and the
    // PVC itself is asked; this apiserver refuses it for a claim no volume is bound to, and the
    // condition says so.
    let grow = r#"{"spec":{"metadataServer":{"storage":{"size":"20Gi"}}}}"#;
    kubectl_ok(&cp, &["patch", "svol", "lost", "--type=merge", "-p", grow]);
    let (s, r, m) = condition_of(&cp, "svol", "lost", "StorageResized", None, Duration::from_secs(30)).await;
    eprintln!("growing the metadata storage: StorageResized={s} {r}: {m}");
    assert!(s == "False" && r == "ResizeRefused" && m.contains("data-lost-meta-0") && m.contains("20Gi"), "{m}");
    let template = kubectl_ok(
        &cp,
        &["get", "sts", "lost-meta", "-o", "jsonpath={.spec.volumeClaimTemplates[0].spec.resources.requests.storage}"],
    );
    assert_eq!(template, "10Gi");
}

/// `(utime + stime)` seconds and resident KiB of process `pid`.
fn cpu_and_rss(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap();
    (ticks / hz, rss.parse().unwrap())
}

/// Requests the apiserver has served so far (the sum of `apiserver_request_total`).
fn apiserver_requests(cp: &ControlPlane) -> f64 {
    kubectl_ok(cp, &["get", "--raw", "/metrics"])
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The benchmark of [7]: apply N Volumes (`STRATUSFS_BENCH_VOLUMES`, default 100) with a
/// metadata server run for each; print the time until all are Ready, the operator's memory and
/// CPU, and the apiserver's requests per minute once settled, beside a minute with the operator
/// stopped (the rest of the control plane's own) and a minute before any Volume existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: the operator with 100 Volumes (a benchmark)"]
async fn bench_a_hundred_volumes() {
    e2e::init();
    let n: usize = std::env::var("STRATUSFS_BENCH_VOLUMES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let (cp, minio) = (ControlPlane::start().await.unwrap(), Minio::start().await.unwrap());
    helm_install(&cp);
    apply(&cp, "secret", &secret("minio", &minio.access_key, &minio.secret_key));
    apply(&cp, "store", &block_store("store", &minio.bucket, &minio.endpoint, "minio"));
    let minute = Duration::from_secs(60);
    let before = apiserver_requests(&cp);
    tokio::time::sleep(minute).await;
    let baseline = apiserver_requests(&cp) - before;

    let root = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..n).map(|_| free_port().unwrap()).collect();
    let maps: Vec<String> =
        (0..n).map(|i| format!("--service-address=v{i}-meta.default.svc:7480=127.0.0.1:{}", ports[i])).collect();
    let maps: Vec<&str> = maps.iter().map(String::as_str).collect();
    let operator = chart_operator(&cp, root.path(), &maps).await;
    let pid = operator.service().unwrap().pid();
    let yaml: String = (0..n).map(|i| format!("---\n{}", volume(&format!("v{i}"), ""))).collect();
    let started = Instant::now();
    apply(&cp, "volumes", &yaml);
    let mut pods = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        pods.push(stand_in(&cp, root.path(), &format!("v{i}"), *port).await);
    }
    let servers_up = started.elapsed();
    loop {
        let list: serde_json::Value = serde_json::from_str(&kubectl_ok(&cp, &["get", "svol", "-o", "json"])).unwrap();
        let ready = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| {
                v["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
            .count();
        if ready == n {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(900), "{ready} of {n} Ready after 15 minutes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_ready = started.elapsed();
    let (cpu_ready, rss_ready) = cpu_and_rss(pid);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (cpu0, _) = cpu_and_rss(pid);
    let before = apiserver_requests(&cp);
    tokio::time::sleep(minute).await;
    let settled = apiserver_requests(&cp) - before;
    let (cpu1, rss_settled) = cpu_and_rss(pid);
    // The same minute with the operator stopped (SIGSTOP): what the rest of the control plane
    // asks on its own with these objects (kube-controller-manager re-checking the unbound PVCs).
    let stop = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    stop(nix::sys::signal::Signal::SIGSTOP);
    let before = apiserver_requests(&cp);
    tokio::time::sleep(minute).await;
    let without = apiserver_requests(&cp) - before;
    stop(nix::sys::signal::Signal::SIGCONT);
    println!(
        "{n} Volumes: all Ready {:.1} s after the apply (their metadata servers all started after {:.1} s, one at a time by the runner)",
        all_ready.as_secs_f64(),
        servers_up.as_secs_f64()
    );
    println!(
        "operator: {:.1} s CPU and {} MiB resident when all were Ready; settled: {:.2} s CPU per minute, {} MiB",
        cpu_ready,
        rss_ready / 1024,
        cpu1 - cpu0,
        rss_settled / 1024
    );
    println!(
        "apiserver requests per minute, settled: {settled:.0}; the same minute with the operator stopped: {without:.0} (so the operator's: {:.0}); before any Volume existed: {baseline:.0}",
        settled - without
    );
}
