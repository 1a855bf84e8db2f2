//! The operator as a process on the real control plane, MinIO as the store, checked as a user
//! would with kubectl: each BlockStore's Ready condition says whether its store works and, when it
//! does not, why (a missing Secret, wrong keys, no such bucket, an endpoint nobody answers on); a
//! fixed Secret is picked up without touching the BlockStore; Events mark each change.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::kube::ControlPlane;
use e2e::minio::Minio;
use e2e::service::{Service, free_port};
use e2e::stratusfs::operator_binary;

use crate::kubernetes::{apply_ok as apply, install_crds, kubectl_ok};

/// Starts the operator with the control plane's kubeconfig (its log in `dir`); returns it and
/// the address of its /metrics.
async fn operator(cp: &ControlPlane, dir: &std::path::Path) -> (Service, String) {
    operator_with(cp, dir, &[]).await
}

/// [`operator`] with more environment (a replica's `POD_NAME`).
async fn operator_with(cp: &ControlPlane, dir: &std::path::Path, env: &[(&str, &str)]) -> (Service, String) {
    let mut cmd = Command::new(operator_binary().unwrap());
    let http = format!("127.0.0.1:{}", free_port().unwrap());
    cmd.env("KUBECONFIG", &cp.kubeconfig).env("RUST_LOG", "info").args(["--http-listen", &http]);
    cmd.envs(env.iter().copied());
    (start_operator(cmd, dir).await, http)
}

/// Starts `cmd` (an operator) and waits until it says it started.
async fn start_operator(cmd: Command, dir: &std::path::Path) -> Service {
    let mut s = Service::spawn("stratusfs-operator", cmd, dir).unwrap();
    let log = s.log_path().to_path_buf();
    s.wait_ready(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { if text.contains("stratusfs-operator started") { Ok(()) } else { Err("not started".to_string()) } }
    })
    .await
    .unwrap();
    s
}

/// The Ready condition of BlockStore `name` once it has one (status, reason, message).
pub(crate) async fn ready_of(cp: &ControlPlane, name: &str, want_status: Option<&str>) -> (String, String, String) {
    condition_of(cp, "bs", name, "Ready", want_status, Duration::from_secs(60)).await
}

/// Condition `type_` of `kind/name` once it has one (of status `want_status`, when given) within
/// `timeout`: (status, reason, message).
pub(crate) async fn condition_of(
    cp: &ControlPlane,
    kind: &str,
    name: &str,
    type_: &str,
    want_status: Option<&str>,
    timeout: Duration,
) -> (String, String, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let json = kubectl_ok(cp, &["get", kind, name, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let found = v["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == type_)).cloned();
        if let Some(c) = found {
            let got = (
                c["status"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
                c["message"].as_str().unwrap().to_string(),
            );
            if want_status.is_none_or(|w| w == got.0) {
                return got;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{kind}/{name}: no {type_} condition{} within {timeout:?}: {json}",
            want_status.map(|w| format!(" of {w}")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub(crate) fn secret(name: &str, key_id: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\nstringData: {{accessKeyId: '{key_id}', secretAccessKey: '{key}'}}\n"
    )
}

pub(crate) fn block_store(name: &str, bucket: &str, endpoint: &str, secret: &str) -> String {
    format!(
        "apiVersion: stratusfs.io/v1alpha1\nkind: BlockStore\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  s3: {{bucket: {bucket}, prefix: team-a, endpoint: '{endpoint}', credentialsSecret: {{name: {secret}}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blockstores_say_whether_their_store_works_and_why_not() {
    e2e::init();
    let (cp, minio) = (ControlPlane::start().await.unwrap(), Minio::start().await.unwrap());
    install_crds(&cp);
    let logs = tempfile::tempdir().unwrap();
    let (_operator, http) = operator(&cp, logs.path()).await;
    apply(&cp, "good-secret", &secret("minio", &minio.access_key, &minio.secret_key));
    apply(&cp, "wrong-secret", &secret("wrong", &minio.access_key, "not-the-key"));
    let closed = format!("http://127.0.0.1:{}", free_port().unwrap());
    let cases = [
        (
            "good",
            block_store("good", &minio.bucket, &minio.endpoint, "minio"),
            "True",
            "Probed",
            "written, read and deleted",
        ),
        (
            "denied",
            block_store("denied", &minio.bucket, &minio.endpoint, "wrong"),
            "False",
            "AccessDenied",
            "access denied",
        ),
        (
            "nobucket",
            block_store("nobucket", "no-such-bucket", &minio.endpoint, "minio"),
            "False",
            "NoSuchBucket",
            "does not exist",
        ),
        (
            "unreachable",
            block_store("unreachable", &minio.bucket, &closed, "minio"),
            "False",
            "Unreachable",
            "cannot reach",
        ),
        (
            "nosecret",
            block_store("nosecret", &minio.bucket, &minio.endpoint, "absent"),
            "False",
            "SecretMissing",
            "default/absent does not exist",
        ),
    ];
    for (name, yaml, ..) in &cases {
        apply(&cp, name, yaml);
    }
    for (name, _, status, reason, message) in &cases {
        let (s, r, m) = ready_of(&cp, name, None).await;
        eprintln!("BlockStore {name}: Ready={s} {r}: {m}");
        assert_eq!((s.as_str(), r.as_str()), (*status, *reason), "{name}: {m}");
        assert!(m.contains(message), "{name}: the message does not say {message:?}: {m}");
    }
    // What `kubectl get bs` shows.
    let table = kubectl_ok(&cp, &["get", "bs", "good"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["good", "True", "s3", &format!("{}/team-a", minio.bucket)], "{table}");
    // An Event says why a store is not ready.
    let events = kubectl_ok(&cp, &["get", "events", "--field-selector", "involvedObject.name=denied", "-o", "json"]);
    assert!(events.contains("AccessDenied"), "{events}");
    // The Secret fixed, the BlockStore untouched: it turns Ready (the operator watches Secrets).
    let started = Instant::now();
    apply(&cp, "fixed-secret", &secret("wrong", &minio.access_key, &minio.secret_key));
    let (s, r, _) = ready_of(&cp, "denied", Some("True")).await;
    assert_eq!((s.as_str(), r.as_str()), ("True", "Probed"));
    eprintln!("a fixed credentials Secret made its BlockStore Ready in {:?}", started.elapsed());
    // Its health and metrics.
    let client = e2e::service::http_client();
    let get = |path: &str| client.get(format!("http://{http}{path}")).send();
    assert!(get("/healthz").await.unwrap().status().is_success());
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for line in
        ["stratusfs_operator_leader 1", "stratusfs_operator_reconciles_total{kind=\"BlockStore\",result=\"not_ready\"}"]
    {
        assert!(metrics.contains(line), "{line} missing from /metrics:\n{metrics}");
    }
}

/// The holder of the operator's Lease.
fn lease_holder(cp: &ControlPlane) -> String {
    let out = cp.kubectl(&["get", "lease", "stratusfs-operator", "-o", "jsonpath={.spec.holderIdentity}"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_operator_waits_until_the_first_stops() {
    e2e::init();
    let (cp, minio) = (ControlPlane::start().await.unwrap(), Minio::start().await.unwrap());
    install_crds(&cp);
    let logs = tempfile::tempdir().unwrap();
    let replica = async |name: &str| {
        let dir = logs.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        operator_with(&cp, &dir, &[("POD_NAME", name), ("POD_NAMESPACE", "default")]).await.0
    };
    let a = replica("a").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while lease_holder(&cp) != "a" {
        assert!(Instant::now() < deadline, "replica a did not take the lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b = replica("b").await;
    apply(&cp, "secret", &secret("minio", &minio.access_key, &minio.secret_key));
    apply(&cp, "one", &block_store("one", &minio.bucket, &minio.endpoint, "minio"));
    assert_eq!(ready_of(&cp, "one", None).await.0, "True");
    assert_eq!(lease_holder(&cp), "a");
    let b_log = std::fs::read_to_string(b.log_path()).unwrap();
    assert!(b_log.contains("another replica leads") && !b_log.contains("blockstore="), "replica b reconciled: {b_log}");
    // The leader stops (a rollout): it gives the Lease up and the other replica leads.
    let stopped = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(a.pid() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    while lease_holder(&cp) != "b" {
        assert!(stopped.elapsed() < Duration::from_secs(30), "replica b did not take the lease: {}", b.log_tail(20));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("replica b leads {:?} after replica a was stopped", stopped.elapsed());
    apply(&cp, "two", &block_store("two", &minio.bucket, &minio.endpoint, "minio"));
    assert_eq!(ready_of(&cp, "two", None).await.0, "True");
    let a_log = std::fs::read_to_string(a.log_path()).unwrap_or_default();
    eprintln!("replica a's last lines: {}", a_log.lines().rev().take(2).collect::<Vec<_>>().join(" | "));
}

/// When the operator last wrote `kind/name` (its managedFields entry: a server-side apply that
/// changes nothing leaves it as it was; the StatefulSet controller's own status writes do not
/// count), with the object's uid, once it exists.
pub(crate) async fn version_of(cp: &ControlPlane, kind: &str, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let path = "jsonpath={.metadata.uid} {.metadata.managedFields[?(@.manager==\"stratusfs-operator\")].time}";
    loop {
        let out = cp.kubectl(&["get", kind, name, "-o", path]).unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "{kind}/{name} was not made within 60 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_gets_its_metadata_servers_children_owned_and_kept() {
    e2e::init();
    let (cp, minio) = (ControlPlane::start().await.unwrap(), Minio::start().await.unwrap());
    install_crds(&cp);
    let logs = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (logs.path().join("a"), logs.path().join("b"));
    std::fs::create_dir(&a_dir).unwrap();
    std::fs::create_dir(&b_dir).unwrap();
    let (operator_a, _) = operator(&cp, &a_dir).await;
    apply(&cp, "secret", &secret("minio", &minio.access_key, &minio.secret_key));
    apply(&cp, "store", &block_store("store", &minio.bucket, &minio.endpoint, "minio"));
    apply(
        &cp,
        "vol",
        "apiVersion: stratusfs.io/v1alpha1\nkind: Volume\nmetadata: {name: vol, namespace: default}\nspec: {blockStore: store}\n",
    );
    let children = [
        ("statefulset", "vol-meta"),
        ("service", "vol-meta"),
        ("secret", "vol-ca"),
        ("secret", "vol-meta-tls"),
        ("secret", "vol-admin"),
    ];
    let mut versions = Vec::new();
    for (kind, name) in children {
        versions.push(version_of(&cp, kind, name).await);
        let owner = kubectl_ok(&cp, &["get", kind, name, "-o", "jsonpath={.metadata.ownerReferences[0]}"]);
        let owner: serde_json::Value = serde_json::from_str(&owner).unwrap();
        assert_eq!(
            (owner["kind"].as_str(), owner["name"].as_str(), owner["controller"].as_bool()),
            (Some("Volume"), Some("vol"), Some(true)),
            "{kind}/{name}"
        );
    }
    let ca = kubectl_ok(&cp, &["get", "secret", "vol-ca", "-o", "jsonpath={.data.ca\\.crt}"]);
    assert!(!ca.is_empty(), "vol-ca has no ca.crt");
    // Status: the endpoint mounts will use; Ready False until the metadata server answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&kubectl_ok(&cp, &["get", "svol", "vol", "-o", "json"])).unwrap();
        let cond =
            |t: &str| v["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == t)).cloned();
        if let (Some(bs), Some(ready)) = (cond("BlockStoreReady"), cond("Ready"))
            && bs["status"] == "True"
        {
            assert_eq!(v["status"]["endpoint"], "stratusfs://vol-meta.default.svc:7480/vol");
            assert_eq!(ready["status"], "False");
            assert!(
                ready["message"]
                    .as_str()
                    .unwrap()
                    .contains("the metadata server at vol-meta.default.svc:7480 does not answer"),
                "{ready}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no BlockStoreReady=True on the Volume: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A child deleted by hand is made again.
    kubectl_ok(&cp, &["delete", "service", "vol-meta"]);
    let again = version_of(&cp, "service", "vol-meta").await;
    assert_ne!(again, versions[1], "the Service was not made again");
    versions[1] = again;
    // Another operator after this one: nothing is rewritten (managedFields times are in seconds).
    tokio::time::sleep(Duration::from_secs(2)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(operator_a.pid() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let (operator_b, b_http) = operator(&cp, &b_dir).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(operator_b.log_path()).unwrap_or_default().contains("leading") {
        assert!(Instant::now() < deadline, "the second operator did not lead: {}", operator_b.log_tail(10));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It reconciled the Volume (its metrics say so), and wrote none of the children again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let metrics = e2e::service::http_client().get(format!("http://{b_http}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("reconciles_total{kind=\"Volume\",result=\"not_ready\"}"), "{metrics}");
    for ((kind, name), before) in children.iter().zip(&versions) {
        assert_eq!(&version_of(&cp, kind, name).await, before, "{kind}/{name} was rewritten by a restarted operator");
    }
}
