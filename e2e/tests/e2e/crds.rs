//! The CRDs of `crds/` on the real control plane, as a user meets them: applied with kubectl they
//! are established; a good BlockStore and Volume are stored with the schema's defaults and listed
//! with their columns; `kubectl explain` answers; and each bad manifest (a one-field change of a
//! good one) makes `kubectl apply` fail with the field's path, storing nothing.

use e2e::kube::ControlPlane;

use crate::kubernetes::{apply, install_crds, kubectl, kubectl_ok};

fn block_store(name: &str, body: &str) -> String {
    format!(
        "apiVersion: stratusfs.io/v1alpha1\nkind: BlockStore\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{body}"
    )
}

const S3: &str = "  s3: {bucket: blocks, endpoint: 'http://127.0.0.1:9000', credentialsSecret: {name: minio}}\n";

fn volume(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: stratusfs.io/v1alpha1\nkind: Volume\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}"
    )
}

fn resource_version(cp: &ControlPlane, kind: &str, name: &str) -> String {
    kubectl_ok(cp, &["get", kind, name, "-o", "jsonpath={.metadata.resourceVersion}"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_are_established_and_refuse_bad_resources_at_apply() {
    e2e::init();
    let cp = ControlPlane::start().await.unwrap();
    install_crds(&cp);

    // Good resources are stored, with the schema's defaults.
    let (ok, err) = apply(&cp, "bs", &block_store("store", S3));
    assert!(ok, "{err}");
    let (ok, err) = apply(&cp, "vol", &volume("vol", "  blockStore: store\n"));
    assert!(ok, "{err}");
    let spec = kubectl_ok(&cp, &["get", "svol", "vol", "-o", "jsonpath={.spec}"]);
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(spec["blockSize"], "4Mi", "{spec}");
    assert_eq!(spec["compression"], "lz4", "{spec}");
    assert_eq!(spec["retention"], "168h", "{spec}");
    assert_eq!(spec["deletionPolicy"], "Retain", "{spec}");
    assert_eq!(spec["metadataServer"]["storage"]["size"], "10Gi", "{spec}");
    let (ok, err) = apply(&cp, "enc", &volume("enc", "  blockStore: store\n  encryption: {secretRef: {name: enc}}\n"));
    assert!(ok, "{err}");
    // The columns users read.
    let table = kubectl_ok(&cp, &["get", "svol"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "BLOCKSTORE", "USED", "SESSIONS", "AGE"], "{table}");
    let table = kubectl_ok(&cp, &["get", "bs"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "BACKEND", "LOCATION", "AGE"], "{table}");
    let explain = kubectl_ok(&cp, &["explain", "volume.spec.quota"]);
    assert!(explain.contains("The most bytes the volume's files may hold") && explain.contains("inodes"), "{explain}");

    // Bad new resources: refused, naming the field; nothing stored.
    let bad_creates: Vec<(&str, String, &str, &str)> = vec![
        ("block size", volume("b1", "  blockStore: store\n  blockSize: 3Mi\n"), "svol", "spec.blockSize"),
        ("no block store", volume("b2", "  compression: lz4\n"), "svol", "spec.blockStore"),
        ("negative quota", volume("b3", "  blockStore: store\n  quota: {bytes: -5}\n"), "svol", "spec.quota.bytes"),
        ("unparsable quota", volume("b4", "  blockStore: store\n  quota: {bytes: lots}\n"), "svol", "spec.quota.bytes"),
        ("zero inodes", volume("b5", "  blockStore: store\n  quota: {inodes: 0}\n"), "svol", "spec.quota.inodes"),
        ("days in retention", volume("b6", "  blockStore: store\n  retention: 7d\n"), "svol", "spec.retention"),
        ("negative retention", volume("b7", "  blockStore: store\n  retention: -1h\n"), "svol", "spec.retention"),
        (
            "unknown compression",
            volume("b8", "  blockStore: store\n  compression: brotli\n"),
            "svol",
            "spec.compression",
        ),
        (
            "unknown deletion policy",
            volume("b9", "  blockStore: store\n  deletionPolicy: Keep\n"),
            "svol",
            "spec.deletionPolicy",
        ),
        ("misspelt field", volume("b10", "  blockStore: store\n  blockSzie: 4Mi\n"), "svol", "spec.blockSzie"),
        (
            "zero metadata storage",
            volume("b11", "  blockStore: store\n  metadataServer: {storage: {size: '0'}}\n"),
            "svol",
            "spec.metadataServer.storage.size",
        ),
        (
            "two backends",
            block_store("b12", &format!("{S3}  gcs: {{bucket: blocks, credentialsSecret: {{name: gcs}}}}\n")),
            "bs",
            "spec",
        ),
        ("no backend", block_store("b13", "  {}\n"), "bs", "spec"),
        ("no bucket", block_store("b14", "  s3: {credentialsSecret: {name: minio}}\n"), "bs", "spec.s3.bucket"),
        ("no credentials", block_store("b15", "  s3: {bucket: blocks}\n"), "bs", "spec.s3.credentialsSecret"),
    ];
    for (what, yaml, kind, field) in &bad_creates {
        let name = yaml.split("name: ").nth(1).unwrap().split(',').next().unwrap();
        let (ok, err) = apply(&cp, name, yaml);
        assert!(!ok, "{what}: applied");
        assert!(err.contains(field), "{what}: the message does not name {field}: {err}");
        let (found, _, _) = kubectl(&cp, &["get", kind, name]);
        assert!(!found, "{what}: stored");
        eprintln!("refused ({what}): {}", err.trim());
    }

    // Bad changes to stored resources: refused, naming the field; the resource unchanged.
    let bad_updates: Vec<(&str, &str, String, &str)> = vec![
        ("changing the block size", "vol", volume("vol", "  blockStore: store\n  blockSize: 1Mi\n"), "spec.blockSize"),
        ("changing the block store", "vol", volume("vol", "  blockStore: other\n"), "spec.blockStore"),
        (
            "adding encryption",
            "vol",
            volume("vol", "  blockStore: store\n  encryption: {secretRef: {name: enc}}\n"),
            "spec.encryption",
        ),
        ("removing encryption", "enc", volume("enc", "  blockStore: store\n"), "spec.encryption"),
        (
            "repointing encryption",
            "enc",
            volume("enc", "  blockStore: store\n  encryption: {secretRef: {name: other}}\n"),
            "spec.encryption",
        ),
        (
            "shrinking the metadata storage",
            "vol",
            volume("vol", "  blockStore: store\n  metadataServer: {storage: {size: 5Gi}}\n"),
            "spec.metadataServer.storage.size",
        ),
        (
            "changing the storage class",
            "vol",
            volume("vol", "  blockStore: store\n  metadataServer: {storage: {storageClassName: fast}}\n"),
            "spec.metadataServer.storage.storageClassName",
        ),
    ];
    for (what, name, yaml, field) in &bad_updates {
        let before = resource_version(&cp, "svol", name);
        let (ok, err) = apply(&cp, &format!("update-{name}"), yaml);
        assert!(!ok, "{what}: applied");
        assert!(err.contains(field), "{what}: the message does not name {field}: {err}");
        assert_eq!(resource_version(&cp, "svol", name), before, "{what}: the Volume changed");
        eprintln!("refused ({what}): {}", err.trim());
    }
    // Changes that are allowed are: a larger metadata PVC, a quota, another retention.
    let grown = volume(
        "vol",
        "  blockStore: store\n  retention: 24h\n  quota: {bytes: 100Gi, inodes: 1000}\n  metadataServer: {storage: {size: 20Gi}}\n",
    );
    let (ok, err) = apply(&cp, "grow", &grown);
    assert!(ok, "{err}");
    eprintln!("{} bad resources refused at kubectl apply", bad_creates.len() + bad_updates.len());
}
