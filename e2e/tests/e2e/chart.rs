//! The Helm chart as a user meets it, on the real control plane: `helm lint` is clean, `helm
//! template` is accepted by the apiserver (server-side dry run), `helm install` makes the CRDs, the
//! operator's Deployment, ServiceAccount and RBAC; the ServiceAccount may do what the operator needs
//! and not more; and the Deployment's pod template, run as a process with the ServiceAccount's
//! token (there is no kubelet here), is an operator that works: a BlockStore turns Ready.

use std::process::Command;

use base64::Engine;
use e2e::kube::ControlPlane;
use e2e::minio::Minio;
use e2e::stratusfs::operator_binary;

use crate::kubernetes::{apply_ok as apply, kubectl_ok};
use crate::operator::{block_store, ready_of, secret, start_operator};

fn helm(cp: &ControlPlane, args: &[&str]) -> (bool, String) {
    let out = Command::new(e2e::tools::binary("helm").unwrap())
        .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_an_operator_that_works_under_its_own_service_account() {
    e2e::init();
    let (cp, minio) = (ControlPlane::start().await.unwrap(), Minio::start().await.unwrap());
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/stratusfs");
    let chart = chart.to_str().unwrap();
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

    let (ok, text) = helm(&cp, &["install", "rel", chart, "-n", "stratusfs"]);
    assert!(ok && text.contains("kubectl apply"), "helm install: {text}");
    kubectl_ok(
        &cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/volumes.stratusfs.io",
            "crd/blockstores.stratusfs.io",
        ],
    );

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
    for (verb, what, ns) in [
        ("list", "nodes", "default"),
        ("create", "pods", "default"),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", "default"),
        ("update", "leases.coordination.k8s.io", "default"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", "default"),
    ] {
        assert!(!can(verb, what, ns), "the operator may {verb} {what} in {ns}");
    }

    // The Deployment's pod template, run as a pod would run it: its command, arguments and
    // environment, the ServiceAccount's token for the API.
    let deploy = kubectl_ok(&cp, &["get", "deployment", "rel-operator", "-n", "stratusfs", "-o", "json"]);
    let deploy: serde_json::Value = serde_json::from_str(&deploy).unwrap();
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "stratusfs-operator");
    let container = &pod["containers"][0];
    let command: Vec<&str> = container["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(command, ["stratusfs-operator"], "the image's program");
    let token = kubectl_ok(&cp, &["create", "token", "stratusfs-operator", "-n", "stratusfs"]);
    let kubeconfig = cp.dir().join("operator-sa.kubeconfig");
    let ca = base64::engine::general_purpose::STANDARD.encode(&cp.ca_pem);
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: e2e, cluster: {{server: '{}', certificate-authority-data: {ca}}}}}]\nusers: [{{name: sa, user: {{token: '{}'}}}}]\ncontexts: [{{name: sa, context: {{cluster: e2e, user: sa}}}}]\ncurrent-context: sa\n",
            cp.server,
            token.trim()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(operator_binary().unwrap());
    for arg in container["args"].as_array().into_iter().flatten() {
        cmd.arg(arg.as_str().unwrap());
    }
    for env in container["env"].as_array().into_iter().flatten() {
        let value = match (&env["value"], env["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (serde_json::Value::String(v), _) => v.clone(),
            (_, Some("metadata.name")) => "rel-operator-0".into(),
            (_, Some("metadata.namespace")) => "stratusfs".into(),
            other => panic!("an env var the runner does not know: {other:?}"),
        };
        cmd.env(env["name"].as_str().unwrap(), value);
    }
    // The pod's own network: its port 8080 is a free port of this machine here.
    cmd.env("KUBECONFIG", &kubeconfig)
        .args(["--http-listen", &format!("127.0.0.1:{}", e2e::service::free_port().unwrap())]);
    let logs = tempfile::tempdir().unwrap();
    let _operator = start_operator(cmd, logs.path()).await;
    apply(&cp, "minio-secret", &secret("minio", &minio.access_key, &minio.secret_key));
    apply(&cp, "store", &block_store("store", &minio.bucket, &minio.endpoint, "minio"));
    let (status, reason, message) = ready_of(&cp, "store", None).await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Probed"), "{message}");
    let events = kubectl_ok(&cp, &["get", "events", "--field-selector", "involvedObject.name=store", "-o", "json"]);
    assert!(events.contains("Probed"), "the operator's Event under its ServiceAccount: {events}");
}
