//! The Helm chart as a user meets it, on the real control plane: `helm lint` is clean, `helm
//! template` is accepted by the apiserver (server-side dry run), `helm install` makes the CRDs, the
//! operator's Deployment, ServiceAccount and RBAC; the ServiceAccount may do what the operator needs
//! and not more; and the Deployment's pod template, run as a process with the ServiceAccount's
//! token (there is no kubelet here), is an operator that works: a BlockStore turns Ready.

use e2e::kube::ControlPlane;
use e2e::minio::Minio;

use crate::kubernetes::{apply_ok as apply, chart_dir, chart_operator, helm, helm_install, kubectl_ok};
use crate::operator::{block_store, ready_of, secret};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_an_operator_that_works_under_its_own_service_account() {
    e2e::init();
    let (cp, minio) = (ControlPlane::start().await.unwrap(), Minio::start().await.unwrap());
    let chart = &chart_dir();
    let kube_version = e2e::tools::version("kube-apiserver").unwrap();

    let (ok, text) = helm(&cp, &["lint", "--strict", chart]);
    assert!(ok && text.contains("0 chart(s) failed"), "{text}");
    // A bad value is refused by values.schema.json, naming it.
    let (ok, text) =
        helm(&cp, &["template", "rel", chart, "--kube-version", kube_version, "--set", "operator.replicas=0"]);
    assert!(!ok && text.contains("/operator/replicas"), "{text}");

    kubectl_ok(&cp, &["create", "namespace", "stratusfs"]);
    let (ok, rendered) =
        helm(&cp, &["template", "rel", chart, "-n", "stratusfs", "--kube-version", kube_version, "--include-crds"]);
    assert!(ok, "{rendered}");
    let file = cp.dir().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    kubectl_ok(&cp, &["apply", "--server-side", "--dry-run=server", "-f", file.to_str().unwrap()]);

    // The StorageClass example: named after the Volume it provisions from, refused without one.
    let sc_args = ["template", "rel", chart, "-n", "stratusfs", "--kube-version", kube_version];
    let (ok, text) = helm(&cp, &[&sc_args[..], &["--set", "csi.storageClass.create=true"]].concat());
    assert!(!ok && text.contains("csi.storageClass.volume"), "{text}");
    let (ok, sc) = helm(
        &cp,
        &[&sc_args[..], &["--set", "csi.storageClass.create=true", "--set", "csi.storageClass.volume=team/data"]]
            .concat(),
    );
    assert!(ok && sc.contains("volume: \"team/data\"") && sc.contains("${pv.name}"), "{sc}");
    let file = cp.dir().join("rendered-sc.yaml");
    std::fs::write(&file, &sc).unwrap();
    kubectl_ok(&cp, &["apply", "--server-side", "--dry-run=server", "-f", file.to_str().unwrap()]);

    let text = helm_install(&cp);
    assert!(text.contains("kubectl apply"), "helm install's NOTES say what to apply next: {text}");

    // Least privilege: what the operator needs, nothing more.
    let sa = "system:serviceaccount:stratusfs:stratusfs-operator";
    let can = |verb: &str, what: &str, ns: &str| {
        let out = cp.kubectl(&["auth", "can-i", verb, what, "-n", ns, "--as", sa]).unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for (verb, what) in
        [("patch", "blockstores.stratusfs.io/status"), ("watch", "secrets"), ("create", "statefulsets.apps")]
    {
        assert!(can(verb, what, "default"), "the operator may not {verb} {what}");
    }
    assert!(can("update", "leases.coordination.k8s.io", "stratusfs"));
    // The CSI controller: claims' Secrets in its own namespace only; Volumes and Secrets read by name.
    let csi = "system:serviceaccount:stratusfs:stratusfs-csi-controller";
    let csi_can = |verb: &str, what: &str, ns: &str| {
        let out = cp.kubectl(&["auth", "can-i", verb, what, "-n", ns, "--as", csi]).unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for (verb, what, ns) in [
        ("create", "secrets", "stratusfs"),
        ("delete", "secrets", "stratusfs"),
        ("get", "secrets", "default"),
        ("get", "volumes.stratusfs.io", "default"),
        ("create", "persistentvolumes", "default"),
        ("patch", "persistentvolumeclaims/status", "default"),
    ] {
        assert!(csi_can(verb, what, ns), "the CSI controller may not {verb} {what} in {ns}");
    }
    for (verb, what, ns) in [
        ("create", "secrets", "default"),
        ("list", "secrets", "default"),
        ("delete", "secrets", "default"),
        ("patch", "volumes.stratusfs.io", "default"),
        ("create", "pods", "default"),
    ] {
        assert!(!csi_can(verb, what, ns), "the CSI controller may {verb} {what} in {ns}");
    }
    for kind in ["csidriver/csi.stratusfs.io", "daemonset/rel-csi-node", "deployment/rel-csi-controller"] {
        kubectl_ok(&cp, &["get", kind, "-n", "stratusfs"]);
    }
    for (verb, what, ns) in [
        ("list", "nodes", "default"),
        ("create", "pods", "default"),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", "default"),
        ("update", "leases.coordination.k8s.io", "default"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", "default"),
    ] {
        assert!(!can(verb, what, ns), "the operator may {verb} {what} in {ns}");
    }

    // The Deployment's pod template, run as a pod would run it (the runner of e2e::pods): its
    // command, arguments and environment, the ServiceAccount's token for the API.
    let deploy = kubectl_ok(&cp, &["get", "deployment", "rel-operator", "-n", "stratusfs", "-o", "json"]);
    let deploy: serde_json::Value = serde_json::from_str(&deploy).unwrap();
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "stratusfs-operator");
    assert_eq!(pod["containers"][0]["command"], serde_json::json!(["stratusfs-operator"]), "the image's program");
    let root = tempfile::tempdir().unwrap();
    let operator = chart_operator(&cp, root.path(), &[]).await;
    assert!(operator.args().iter().any(|a| a.starts_with("--http-listen=127.0.0.1:")), "{:?}", operator.args());
    apply(&cp, "minio-secret", &secret("minio", &minio.access_key, &minio.secret_key));
    apply(&cp, "store", &block_store("store", &minio.bucket, &minio.endpoint, "minio"));
    let (status, reason, message) = ready_of(&cp, "store", None).await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Probed"), "{message}");
    let events = kubectl_ok(&cp, &["get", "events", "--field-selector", "involvedObject.name=store", "-o", "json"]);
    assert!(events.contains("Probed"), "the operator's Event under its ServiceAccount: {events}");
}
