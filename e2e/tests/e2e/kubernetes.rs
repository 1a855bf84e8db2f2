//! The control plane is real: kube-rs writes, kubectl reads the same objects back, the version
//! is the pinned one, and kube-controller-manager garbage-collects dependents.

use std::time::Duration;

use e2e::kube::ControlPlane;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ObjectMeta, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

/// kubectl `args` against `cp`: (success, stdout, stderr).
pub(crate) fn kubectl(cp: &ControlPlane, args: &[&str]) -> (bool, String, String) {
    let out = cp.kubectl(args).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// kubectl `args` against `cp`, which must succeed: its stdout.
pub(crate) fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let (ok, out, err) = kubectl(cp, args);
    assert!(ok, "kubectl {}: {out}\n{err}", args.join(" "));
    out
}

/// Key `key` of Secret `ns/name`, decoded.
pub(crate) fn secret_value_in(cp: &ControlPlane, ns: &str, name: &str, key: &str) -> String {
    use base64::Engine;
    let path = format!("jsonpath={{.data.{}}}", key.replace('.', "\\."));
    let b64 = kubectl_ok(cp, &["get", "secret", name, "-n", ns, "-o", &path]);
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap()).unwrap()
}

/// `kubectl apply` of `yaml` (written to `NAME.yaml` in the control plane's folder): (success,
/// stderr).
pub(crate) fn apply(cp: &ControlPlane, name: &str, yaml: &str) -> (bool, String) {
    let path = cp.dir().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let (ok, _, err) = kubectl(cp, &["apply", "-f", path.to_str().unwrap()]);
    (ok, err)
}

/// [`apply`], which must succeed.
pub(crate) fn apply_ok(cp: &ControlPlane, name: &str, yaml: &str) {
    let (ok, err) = apply(cp, name, yaml);
    assert!(ok, "kubectl apply {name}: {err}");
}

/// The CRDs of `crds/`, established. (They embed Kubernetes' own Affinity schema: too large for
/// client-side apply's annotation, hence server-side.)
pub(crate) fn install_crds(cp: &ControlPlane) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    kubectl_ok(cp, &["apply", "--server-side", "-f", dir.to_str().unwrap()]);
    crds_established(cp);
}

/// Waits until the stratusfs CRDs are established.
fn crds_established(cp: &ControlPlane) {
    kubectl_ok(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=180s",
            "crd/volumes.stratusfs.io",
            "crd/blockstores.stratusfs.io",
        ],
    );
}

/// The chart's folder.
pub(crate) fn chart_dir() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/stratusfs").to_str().unwrap().to_string()
}

/// The namespace the tests install the chart into, as release `rel`.
pub(crate) const CHART_NS: &str = "stratusfs";

/// The pinned helm against `cp`: (success, stdout and stderr).
pub(crate) fn helm(cp: &ControlPlane, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(e2e::tools::binary("helm").unwrap())
        .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `helm install rel` of the chart into [`CHART_NS`]; waits for its CRDs. Returns helm's output.
pub(crate) fn helm_install(cp: &ControlPlane) -> String {
    let (ok, text) = helm(cp, &["install", "rel", &chart_dir(), "-n", CHART_NS, "--create-namespace"]);
    assert!(ok, "helm install: {text}");
    crds_established(cp);
    text
}

/// The chart's operator Deployment run by the pod-template runner (its ServiceAccount's token,
/// not admin), with `extra` arguments (`--service-address` mappings); waits until it is ready.
pub(crate) async fn chart_operator(cp: &ControlPlane, root: &std::path::Path, extra: &[&str]) -> e2e::pods::Pod {
    e2e::pods::Pod::run(
        cp,
        CHART_NS,
        "deployment/rel-operator",
        root,
        e2e::pods::RunOptions { extra_args: extra, ..Default::default() },
    )
    .await
    .unwrap()
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.stratusfs.io
spec:
  group: e2e.stratusfs.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_writes_and_kubectl_reads_back() {
    e2e::init();
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client().await.unwrap();

    // The version ldflags took: the server says the pinned version, not v0.0.0-master.
    let version = client.apiserver_version().await.unwrap();
    let pinned = e2e::tools::version("kube-apiserver").unwrap();
    assert_eq!(version.git_version, pinned);

    // A namespace, created with kube-rs, read with kubectl.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta { name: Some("e2e-smoke".into()), ..Default::default() },
        ..Default::default()
    };
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let phase = kubectl_ok(&cp, &["get", "namespace", "e2e-smoke", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Active");

    // A CRD, created with kube-rs from YAML, established, and a custom object of its kind.
    let crd: CustomResourceDefinition = serde_saphyr::from_str(CRD).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let established = kube::runtime::wait::await_condition(
        crds.clone(),
        "widgets.e2e.stratusfs.io",
        kube::runtime::wait::conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(30), established).await.unwrap().unwrap();
    let names = kubectl_ok(&cp, &["get", "crd", "-o", "name"]);
    assert!(names.contains("customresourcedefinition.apiextensions.k8s.io/widgets.e2e.stratusfs.io"), "{names}");

    let gvk = GroupVersionKind::gvk("e2e.stratusfs.io", "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "e2e-smoke", &ApiResource::from_gvk(&gvk));
    let mut w = DynamicObject::new("w1", &ApiResource::from_gvk(&gvk));
    w.data = serde_json::json!({"spec": {"size": 3}});
    widgets.create(&PostParams::default(), &w).await.unwrap();
    let size = kubectl_ok(&cp, &["-n", "e2e-smoke", "get", "widget", "w1", "-o", "jsonpath={.spec.size}"]);
    assert_eq!(size, "3");

    // Schema validation rejects a bad object at apply time, with a message naming the field.
    let mut bad = DynamicObject::new("w2", &ApiResource::from_gvk(&gvk));
    bad.data = serde_json::json!({"spec": {"size": 0}});
    let err = widgets.create(&PostParams::default(), &bad).await.unwrap_err();
    assert!(err.to_string().contains("spec.size"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_manager_collects_garbage() {
    e2e::init();
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta { name: Some("owner".into()), ..Default::default() },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let child = ConfigMap {
        metadata: ObjectMeta {
            name: Some("child".into()),
            owner_references: Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "owner".into(),
                uid: owner.metadata.uid.clone().unwrap(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &child).await.unwrap();
    cms.delete("owner", &DeleteParams::background()).await.unwrap();
    let start = std::time::Instant::now();
    while cms.get_opt("child").await.unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the dependent ConfigMap was not garbage-collected within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = kubectl_ok(&cp, &["get", "configmaps", "-o", "name"]);
    assert!(!out.contains("configmap/child"), "{out}");
}
