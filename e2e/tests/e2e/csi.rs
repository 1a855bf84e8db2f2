//! The CSI driver on the real control plane, MinIO as the store, a Volume run by the chart's
//! operator (its metadata server the StatefulSet's pod template, run by the pod-template runner):
//!
//! - csi-sanity (pinned in e2e/tools/versions), the CSI community's suite, against one
//!   `stratusfs-csi --controller --node` process: every spec of what the driver advertises passes;
//!   the skipped ones are those of capabilities it does not advertise (listed in docs/csi.md).
//! - The user path of claims: the chart's controller Deployment (stratusfs-csi, external-provisioner,
//!   external-resizer, each container run from its pod template under the chart's ServiceAccount),
//!   a StorageClass and PVCs: a bound PV whose directory has the quota and whose token cannot reach
//!   outside it; expansion raises the quota; deleting the PVC does what the reclaim policy says.
//!   Pods are published as kubelet would (there is no kubelet here): from the PV and its Secret,
//!   over the node plugin's socket.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::csi::Driver;
use e2e::kube::ControlPlane;
use e2e::minio::Minio;
use e2e::pods::{Pod, RunOptions};
use e2e::service::free_port;
use fs_core::{AdminClient, ClientTrust};
use stratusfs_csi::csi;
use stratusfs_csi::csi::volume_capability::access_mode::Mode;
use tonic::Code;

use crate::csi_node::{capability, publish};
use crate::kubernetes::{
    CHART_NS, apply_ok as apply, chart_operator, helm_install, kubectl, kubectl_ok, secret_value_in,
};
use crate::operator::{block_store, condition_of, ready_of, secret, version_of};

/// csi-sanity's summary counts: (passed, failed, skipped).
fn counts(out: &str) -> (u32, u32, u32) {
    let number = |what: &str| {
        out.split('|')
            .find_map(|part| {
                let plain: String = part.chars().filter(|c| c.is_ascii_alphanumeric() || *c == ' ').collect();
                let words: Vec<&str> = plain.split_whitespace().collect();
                let at = words.iter().position(|w| *w == what)?;
                words.get(at.checked_sub(1)?)?.trim_start_matches("1m").parse().ok()
            })
            .unwrap_or(0)
    };
    (number("Passed"), number("Failed"), number("Skipped"))
}

/// The control plane with the chart installed, its operator running, a BlockStore on MinIO and a
/// Ready Volume `data` in `default` whose metadata server listens on `port`.
struct World {
    cp: ControlPlane,
    _minio: Minio,
    root: tempfile::TempDir,
    _operator: Pod,
    meta: Pod,
    /// `--service-address` for the Volume's Service.
    map: String,
}

impl World {
    async fn start() -> World {
        e2e::init();
        let (cp, minio) = (ControlPlane::start().await.unwrap(), Minio::start().await.unwrap());
        helm_install(&cp);
        let root = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let map = format!("--service-address=data-meta.default.svc:7480=127.0.0.1:{port}");
        let operator = chart_operator(&cp, root.path(), &[&map]).await;
        apply(&cp, "secret", &secret("minio", &minio.access_key, &minio.secret_key));
        apply(&cp, "store", &block_store("store", &minio.bucket, &minio.endpoint, "minio"));
        assert_eq!(ready_of(&cp, "store", None).await.0, "True");
        let volume = "apiVersion: stratusfs.io/v1alpha1\nkind: Volume\nmetadata: {name: data, namespace: default}\nspec: {blockStore: store}\n";
        apply(&cp, "data", volume);
        version_of(&cp, "statefulset", "data-meta").await;
        let o = RunOptions { ports: &[(7480, port)], ..Default::default() };
        let meta = Pod::run(&cp, "default", "statefulset/data-meta", root.path(), o).await.unwrap();
        condition_of(&cp, "svol", "data", "Ready", Some("True"), Duration::from_secs(60)).await;
        World { cp, _minio: minio, root, _operator: operator, meta, map }
    }

    fn secret(&self, ns: &str, name: &str, key: &str) -> String {
        secret_value_in(&self.cp, ns, name, key)
    }

    /// An admin client of the Volume's server, as the operator reaches it.
    async fn admin(&self) -> AdminClient {
        let trust = ClientTrust {
            ca_pem: Some(self.secret("default", "data-ca", "ca.crt")),
            server_name: Some("data-meta.default.svc".into()),
            ..Default::default()
        };
        AdminClient::connect(&self.meta.address(7480), &trust, &self.secret("default", "data-admin", "token"))
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_sanity_passes_against_a_real_metadata_server_and_minio() {
    let w = World::start().await;
    let kubeconfig = w.cp.kubeconfig.display().to_string();
    let driver = Driver::start(
        &["--controller", "--node", &format!("--namespace={CHART_NS}"), &w.map],
        &[("KUBECONFIG", &kubeconfig)],
    )
    .await
    .unwrap();
    let dir = driver.dir();
    let params = dir.join("parameters.yaml");
    std::fs::write(&params, "volume: default/data\n").unwrap();
    // The node-publish Secret csi-sanity passes: the Volume's mount token, which reaches every
    // claim (a PV of a dynamic claim names its own Secret instead).
    let secrets = dir.join("secrets.yaml");
    let indent = |pem: String| pem.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    std::fs::write(
        &secrets,
        format!(
            "NodePublishVolumeSecret:\n  token: {}\n  ca.crt: |\n{}\n",
            w.secret("default", "data-mount", "token"),
            indent(w.secret("default", "data-ca", "ca.crt"))
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(e2e::tools::binary("csi-sanity").unwrap())
        .arg(format!("--csi.endpoint={}", driver.socket.display()))
        .arg(format!("--csi.mountdir={}", dir.join("mount").display()))
        .arg(format!("--csi.stagingdir={}", dir.join("staging").display()))
        .arg(format!("--csi.testvolumeparameters={}", params.display()))
        .arg(format!("--csi.secrets={}", secrets.display()))
        .arg("--csi.testvolumesize=1073741824")
        .args(["-ginkgo.no-color", "-ginkgo.v"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let (passed, failed, skipped) = counts(&text);
    eprintln!("csi-sanity: {passed} passed, {failed} failed, {skipped} skipped in {:?}", started.elapsed());
    // Every skip is a capability the driver does not advertise (docs/csi.md lists them).
    let mut reasons: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[SKIPPED] "))
        .filter(|r| !r.starts_with('[') && !r.starts_with("in ["))
        .collect();
    reasons.sort();
    reasons.dedup();
    eprintln!("skipped because: {}", reasons.join("; "));
    const NOT_ADVERTISED: [&str; 17] = [
        "ControllerModifyVolume not supported",
        "ControllerUnpublishVolume not supported",
        "Modify Volume not supported",
        "Modify volume not supported",
        "ControllerPublishVolume not supported",
        "Controller Publish, UnpublishVolume not supported",
        "CreateSnapshot not supported",
        "DeleteSnapshot not supported",
        "GroupControllerService not supported",
        "ListSnapshots not supported",
        "ListVolumes not supported",
        "NodeExpandVolume not supported",
        "NodeStageVolume not supported",
        "NodeUnstageVolume not supported",
        "Snapshot not supported",
        "Volume Cloning not supported",
        "GetCapacity not supported",
    ];
    let unexpected: Vec<&&str> = reasons.iter().filter(|r| !NOT_ADVERTISED.contains(r)).collect();
    assert!(unexpected.is_empty(), "specs skipped for another reason: {unexpected:?}");
    assert!(
        out.status.success() && failed == 0 && passed >= 35,
        "csi-sanity:\n{text}\n--- driver log ---\n{}",
        driver.log_tail(60)
    );
}

/// The name of the PV bound to PVC `name` once it is Bound.
async fn bound(cp: &ControlPlane, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, phase, _) = kubectl(cp, &["get", "pvc", name, "-o", "jsonpath={.status.phase}"]);
        if phase == "Bound" {
            return kubectl_ok(cp, &["get", "pvc", name, "-o", "jsonpath={.spec.volumeName}"]);
        }
        let events = kubectl(cp, &["get", "events", "--field-selector", &format!("involvedObject.name={name}")]).1;
        assert!(Instant::now() < deadline, "PVC {name} not Bound within 60 s: {phase}\n{events}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn storage_class(name: &str, reclaim: &str) -> String {
    format!(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {name}}}\nprovisioner: csi.stratusfs.io\nparameters:\n  volume: data\n  inodes: '1000'\n  csi.storage.k8s.io/node-publish-secret-name: ${{pv.name}}\n  csi.storage.k8s.io/node-publish-secret-namespace: {CHART_NS}\nreclaimPolicy: {reclaim}\nvolumeBindingMode: Immediate\nallowVolumeExpansion: true\n"
    )
}

fn claim(name: &str, class: &str, size: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  storageClassName: {class}\n  accessModes: [ReadWriteMany]\n  resources: {{requests: {{storage: {size}}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_get_directories_with_quotas_and_tokens_of_their_own() {
    let w = World::start().await;
    let cp = &w.cp;
    // The chart's controller Deployment, each container from its pod template.
    let run = |container: &'static str, extra: &'static [&'static str]| {
        let o = RunOptions { container: Some(container), extra_args: extra, ..Default::default() };
        Pod::run(cp, CHART_NS, "deployment/rel-csi-controller", w.root.path(), o)
    };
    let map: &'static str = Box::leak(w.map.clone().into_boxed_str());
    let maps: &'static [&'static str] = Box::leak(vec![map].into_boxed_slice());
    let controller = run("stratusfs-csi", maps).await.unwrap();
    let socket = w.root.path().join("rel-csi-controller-0/volumes/socket-dir/csi.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the controller made no socket: {:?}", controller.args());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _provisioner = run("csi-provisioner", &[]).await.unwrap();
    let _resizer = run("csi-resizer", &[]).await.unwrap();
    let kubeconfig = w.cp.kubeconfig.display().to_string();
    let node_driver = Driver::start(&["--node", map], &[("KUBECONFIG", &kubeconfig)]).await.unwrap();
    let mut node = node_driver.node().await.unwrap();
    apply(cp, "sc-delete", &storage_class("claims", "Delete"));
    apply(cp, "sc-retain", &storage_class("kept", "Retain"));

    let started = Instant::now();
    apply(cp, "pvc-a", &claim("a", "claims", "1Gi"));
    apply(cp, "pvc-b", &claim("b", "claims", "1Gi"));
    apply(cp, "pvc-k", &claim("k", "kept", "100Mi"));
    let (pv_a, pv_b, pv_k) = (bound(cp, "a").await, bound(cp, "b").await, bound(cp, "k").await);
    eprintln!("three PVCs Bound {:?} after they were applied", started.elapsed());
    let pv: serde_json::Value = serde_json::from_str(&kubectl_ok(cp, &["get", "pv", &pv_a, "-o", "json"])).unwrap();
    let csi_src = &pv["spec"]["csi"];
    assert_eq!(csi_src["driver"], "csi.stratusfs.io");
    assert_eq!(csi_src["volumeHandle"], format!("default/data/{pv_a}"));
    assert_eq!(csi_src["volumeAttributes"]["source"], format!("stratusfs://data-meta.default.svc:7480/data/{pv_a}"));
    assert_eq!(csi_src["nodePublishSecretRef"]["name"], pv_a.as_str());
    assert_eq!(csi_src["nodePublishSecretRef"]["namespace"], CHART_NS);
    assert_eq!(pv["spec"]["capacity"]["storage"], "1Gi");

    // The claim's directory has the quota.
    let mut admin = w.admin().await;
    let state = admin.claim("data", &format!("/{pv_a}")).await.unwrap().expect("the claim exists on the server");
    let q = state.quota.expect("a quota");
    assert_eq!((q.quota.bytes, q.quota.inodes), (1 << 30, 1000));

    // Publish as kubelet would: the PV's attributes and its Secret.
    let publish_pv = |pv_name: &str, target: &std::path::Path, token_of: &str| {
        let token = w.secret(CHART_NS, token_of, "token");
        let ca = w.secret(CHART_NS, token_of, "ca.crt");
        let src = format!("stratusfs://data-meta.default.svc:7480/data/{pv_name}");
        publish(
            &format!("default/data/{pv_name}"),
            &src,
            target,
            &[("token", &token), ("ca.crt", &ca)],
            capability(Mode::MultiNodeMultiWriter, &[], ""),
            false,
        )
    };
    let targets = node_driver.dir().join("pods");
    std::fs::create_dir(&targets).unwrap();
    let (ta, tb) = (targets.join("a"), targets.join("b"));
    node.node_publish_volume(publish_pv(&pv_a, &ta, &pv_a)).await.unwrap();
    node.node_publish_volume(publish_pv(&pv_b, &tb, &pv_b)).await.unwrap();
    std::fs::write(tb.join("secret-of-b"), b"b's").unwrap();
    std::fs::write(ta.join("mine"), b"a's").unwrap();
    let df = nix::sys::statvfs::statvfs(&ta).unwrap();
    assert_eq!(df.blocks() * df.fragment_size(), 1 << 30, "df in the pod shows the claim's size");

    // The token cannot reach outside its directory: `..`, an absolute symlink, another claim's token.
    std::os::unix::fs::symlink(format!("/{pv_b}"), ta.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../..", ta.join("up")).unwrap();
    assert!(std::fs::read(ta.join("abs/secret-of-b")).is_err(), "an absolute symlink left the claim");
    assert!(!ta.join("up").join(&pv_b).exists(), "`..` reached the volume's root");
    assert!(!ta.join("..").join(&pv_b).exists(), "`..` of the target reached the volume's root");
    let e = node.node_publish_volume(publish_pv(&pv_a, &targets.join("x"), &pv_b)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "claim b's token on claim a's directory: {e:?}");

    // Expansion raises the quota, while published.
    kubectl_ok(
        cp,
        &["patch", "pvc", "a", "--type=merge", "-p", r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, cap, _) = kubectl(cp, &["get", "pvc", "a", "-o", "jsonpath={.status.capacity.storage}"]);
        if cap == "2Gi" {
            break;
        }
        assert!(Instant::now() < deadline, "PVC a not resized within 60 s: {cap}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let q = admin.claim("data", &format!("/{pv_a}")).await.unwrap().unwrap().quota.unwrap();
    assert_eq!(q.quota.bytes, 2 << 30);
    let df = nix::sys::statvfs::statvfs(&ta).unwrap();
    assert_eq!(df.blocks() * df.fragment_size(), 2 << 30, "df shows the new size");

    // Delete: the PV, the Secret and the directory go (the directory in the background).
    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: "x".into(),
        target_path: ta.display().to_string(),
    })
    .await
    .unwrap();
    kubectl_ok(cp, &["delete", "pvc", "a"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while kubectl(cp, &["get", "pv", &pv_a]).0 {
        assert!(Instant::now() < deadline, "PV {pv_a} still there 60 s after its PVC was deleted");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!kubectl(cp, &["get", "secret", &pv_a, "-n", CHART_NS]).0, "the claim's Secret is gone");
    assert!(admin.claim("data", &format!("/{pv_a}")).await.unwrap().is_none(), "the claim's token is revoked");
    // The whole volume, through its own mount Secret: the directory is gone at once, and emptied
    // from the trash in the background.
    let all = targets.join("all");
    let whole = publish(
        "default/data",
        "stratusfs://data-meta.default.svc:7480/data",
        &all,
        &[
            ("token", &w.secret("default", "data-mount", "token")),
            ("ca.crt", &w.secret("default", "data-ca", "ca.crt")),
        ],
        capability(Mode::MultiNodeMultiWriter, &[], ""),
        false,
    );
    node.node_publish_volume(whole).await.unwrap();
    assert!(!all.join(&pv_a).exists(), "the deleted claim's directory is gone from its place");
    assert!(all.join(&pv_b).join("secret-of-b").exists());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(all.join(".stratusfs-trash")).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(Instant::now() < deadline, "the trash was not emptied within 30 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Retain: the PV is Released and the directory and its token stay.
    kubectl_ok(cp, &["delete", "pvc", "k"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, phase, _) = kubectl(cp, &["get", "pv", &pv_k, "-o", "jsonpath={.status.phase}"]);
        if phase == "Released" {
            break;
        }
        assert!(Instant::now() < deadline, "PV {pv_k} not Released within 60 s: {phase}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(admin.claim("data", &format!("/{pv_k}")).await.unwrap().is_some(), "Retain keeps the claim");
    assert!(kubectl(cp, &["get", "secret", &pv_k, "-n", CHART_NS]).0, "Retain keeps the claim's Secret");
    assert!(all.join(&pv_k).is_dir(), "Retain keeps the claim's directory");
    for t in [&tb, &all] {
        let req = csi::NodeUnpublishVolumeRequest { volume_id: "x".into(), target_path: t.display().to_string() };
        node.node_unpublish_volume(req).await.unwrap();
    }
}

/// The resident memory of process `pid`, MiB.
pub(crate) fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: the CSI driver's benchmark (publish times, 50 parallel CreateVolumes, node memory)"]
async fn csi_benchmark_publish_create_and_node_memory() {
    let w = World::start().await;
    let kubeconfig = w.cp.kubeconfig.display().to_string();
    let ns = format!("--namespace={CHART_NS}");
    let driver = Driver::start(&["--controller", "--node", &ns, &w.map], &[("KUBECONFIG", &kubeconfig)]).await.unwrap();
    let cap = || capability(Mode::MultiNodeMultiWriter, &[], "");
    let create = |name: String| {
        let socket = driver.socket.clone();
        async move {
            let mut c = stratusfs_csi::csi::controller_client::ControllerClient::new(
                stratusfs_csi::server::connect(&socket).await.unwrap(),
            );
            let started = Instant::now();
            let v = c
                .create_volume(csi::CreateVolumeRequest {
                    name,
                    capacity_range: Some(csi::CapacityRange { required_bytes: 1 << 30, limit_bytes: 0 }),
                    volume_capabilities: vec![cap()],
                    parameters: [("volume".to_string(), "default/data".to_string())].into_iter().collect(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap();
            (started.elapsed(), v)
        }
    };
    // 50 claims at once, as a provisioner with 50 workers would ask.
    let started = Instant::now();
    let made = futures::future::join_all((0..50).map(|i| create(format!("pvc-bench-{i:02}")))).await;
    let wall = started.elapsed();
    let mut lat: Vec<Duration> = made.iter().map(|(d, _)| *d).collect();
    lat.sort();
    println!(
        "CreateVolume, 50 in parallel: all made in {wall:?}; latency median {:?}, p90 {:?}, max {:?}",
        lat[25], lat[45], lat[49]
    );
    // Publish: the first pod of a claim on a node (a new session) and the second (shared).
    let token = w.secret("default", "data-mount", "token");
    let ca = w.secret("default", "data-ca", "ca.crt");
    let secrets = [("token", token.as_str()), ("ca.crt", ca.as_str())];
    let mut node = driver.node().await.unwrap();
    let targets = driver.dir().join("pods");
    std::fs::create_dir(&targets).unwrap();
    let idle = rss_mib(driver.pid());
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for (i, (_, v)) in made.iter().enumerate() {
        let src = &v.volume_context["source"];
        let t = Instant::now();
        node.node_publish_volume(publish(&v.volume_id, src, &targets.join(format!("{i}-a")), &secrets, cap(), false))
            .await
            .unwrap();
        first.push(t.elapsed());
        if i == 0 {
            println!(
                "node plugin memory with 1 published target: {:.1} MiB (idle {idle:.1} MiB)",
                rss_mib(driver.pid())
            );
        }
        let t = Instant::now();
        node.node_publish_volume(publish(&v.volume_id, src, &targets.join(format!("{i}-b")), &secrets, cap(), false))
            .await
            .unwrap();
        second.push(t.elapsed());
    }
    first.sort();
    second.sort();
    println!(
        "NodePublish: first pod of a claim median {:?} (max {:?}); second pod median {:?} (max {:?})",
        first[25], first[49], second[25], second[49]
    );
    println!(
        "node plugin memory with 50 claims published (50 sessions, 100 targets): {:.1} MiB",
        rss_mib(driver.pid())
    );
    for i in 0..50 {
        for s in ["a", "b"] {
            let req = csi::NodeUnpublishVolumeRequest {
                volume_id: "x".into(),
                target_path: targets.join(format!("{i}-{s}")).display().to_string(),
            };
            node.node_unpublish_volume(req).await.unwrap();
        }
    }
}
