//! What the operator makes for a Volume `<vol>`, as pure functions of the Volume (the reconciler
//! server-side applies them with owner references): the metadata server's StatefulSet and Service
//! `<vol>-meta`. Names are the contract of docs/operator.md.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume as PodVolume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use stratusfs_api::Volume;
use stratusfs_api::volume::DeletionPolicy;

/// The metadata server's gRPC (TLS) and HTTP ports.
pub const GRPC_PORT: i32 = stratusfs_api::volume::GRPC_PORT as i32;
pub const HTTP_PORT: i32 = 7481;

/// `<vol>-meta-tls`: its server certificate (`tls.crt`, `tls.key`).
pub fn tls_secret(vol: &Volume) -> String {
    format!("{}-meta-tls", vol.name_any())
}

/// The labels of a Volume's metadata server (its pods are selected by them).
fn labels(vol: &Volume) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "stratusfs".into()),
        ("app.kubernetes.io/component".into(), "metadata".into()),
        ("stratusfs.io/volume".into(), vol.name_any()),
    ])
}

/// Metadata of a child: its name, the Volume's namespace, the labels, the Volume as controller.
fn child_meta(vol: &Volume, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: vol.namespace(),
        labels: Some(labels(vol)),
        owner_references: vol.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

pub fn meta_service(vol: &Volume) -> Service {
    let port = |name: &str, p: i32| ServicePort {
        name: Some(name.into()),
        port: p,
        target_port: Some(IntOrString::Int(p)),
        ..Default::default()
    };
    Service {
        metadata: child_meta(vol, vol.meta_name()),
        spec: Some(ServiceSpec {
            selector: Some(labels(vol)),
            ports: Some(vec![port("grpc", GRPC_PORT), port("http", HTTP_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The metadata server: one replica of `stratusfs meta` with its database on a PVC (`data`, kept
/// or deleted with the Volume as its deletion policy says), the certificate and the admin token
/// from Secrets, probes on /healthz and /readyz.
pub fn meta_statefulset(vol: &Volume, image: &str) -> StatefulSet {
    let ms = &vol.spec.metadata_server;
    let secret_volume = |name: &str, secret: String| PodVolume {
        name: name.into(),
        secret: Some(SecretVolumeSource { secret_name: Some(secret), default_mode: Some(0o440), ..Default::default() }),
        ..Default::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    };
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    };
    let args = [
        "meta",
        "--data-dir",
        "/data",
        "--listen",
        &format!("0.0.0.0:{GRPC_PORT}"),
        "--http-listen",
        &format!("0.0.0.0:{HTTP_PORT}"),
        "--tls-cert",
        "/tls/tls.crt",
        "--tls-key",
        "/tls/tls.key",
        "--admin-token-file",
        "/admin/token",
    ]
    .map(String::from);
    let container = Container {
        name: "meta".into(),
        image: Some(ms.image.clone().unwrap_or_else(|| image.to_string())),
        command: Some(vec!["stratusfs".into()]),
        args: Some(args.to_vec()),
        ports: Some(vec![
            ContainerPort { name: Some("grpc".into()), container_port: GRPC_PORT, ..Default::default() },
            ContainerPort { name: Some("http".into()), container_port: HTTP_PORT, ..Default::default() },
        ]),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(probe("/healthz")),
        volume_mounts: Some(vec![
            mount("data", "/data", false),
            mount("tls", "/tls", true),
            mount("admin", "/admin", true),
        ]),
        resources: ms.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let when_deleted = match vol.spec.deletion_policy {
        DeletionPolicy::Retain => "Retain",
        DeletionPolicy::Delete => "Delete",
    };
    let data = PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some("data".into()), labels: Some(labels(vol)), ..Default::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: ms.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), ms.storage.size.clone())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    StatefulSet {
        metadata: child_meta(vol, vol.meta_name()),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(vol.meta_name()),
            selector: LabelSelector { match_labels: Some(labels(vol)), ..Default::default() },
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(when_deleted.into()),
                when_scaled: Some("Retain".into()),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(vol)), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![
                        secret_volume("tls", tls_secret(vol)),
                        secret_volume("admin", vol.admin_secret()),
                    ]),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        fs_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                        ..Default::default()
                    }),
                    node_selector: ms.node_selector.clone(),
                    tolerations: ms.tolerations.clone(),
                    affinity: ms.affinity.clone(),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![data]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(yaml: &str) -> Volume {
        let mut v: Volume = serde_saphyr::from_str(yaml).unwrap();
        v.metadata.uid = Some("0b6c3e4e-1111-4222-8333-944445555666".into());
        v
    }

    const VOL: &str = "apiVersion: stratusfs.io/v1alpha1\nkind: Volume\nmetadata: {name: data, namespace: team}\nspec: {blockStore: store}\n";

    #[test]
    fn the_metadata_server_is_named_owned_and_configured_from_the_volume() {
        let v = volume(VOL);
        let sts = meta_statefulset(&v, "stratusfs:0.1.0");
        assert_eq!(sts.name_any(), "data-meta");
        assert_eq!(sts.namespace().as_deref(), Some("team"));
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Volume", "data", Some(true)));
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.service_name.as_deref(), Some("data-meta"));
        // The pods carry the labels the selector (and the Service) select.
        let pod_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(spec.selector.match_labels.as_ref(), Some(pod_labels));
        assert_eq!(meta_service(&v).spec.unwrap().selector.as_ref(), Some(pod_labels));
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("stratusfs:0.1.0"));
        let args = c.args.as_ref().unwrap().join(" ");
        assert!(args.starts_with("meta --data-dir /data") && args.contains("--tls-cert /tls/tls.crt"), "{args}");
        assert!(args.contains("--admin-token-file /admin/token"), "{args}");
        // Retain (the default) keeps the database's PVC when the Volume goes; 10Gi by default.
        let policy = spec.persistent_volume_claim_retention_policy.as_ref().unwrap();
        assert_eq!(policy.when_deleted.as_deref(), Some("Retain"));
        let pvc = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let size = &pvc.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"];
        assert_eq!(size.0, "10Gi");
        // The spec's choices reach the pod.
        let v = volume(&VOL.replace(
            "spec: {blockStore: store}",
            "spec: {blockStore: store, deletionPolicy: Delete, metadataServer: {image: 'own:1', storage: {size: 20Gi, storageClassName: fast}, nodeSelector: {disk: ssd}}}",
        ));
        let sts = meta_statefulset(&v, "stratusfs:0.1.0");
        let spec = sts.spec.unwrap();
        assert_eq!(spec.persistent_volume_claim_retention_policy.unwrap().when_deleted.as_deref(), Some("Delete"));
        let pvc = &spec.volume_claim_templates.unwrap()[0];
        assert_eq!(pvc.spec.as_ref().unwrap().storage_class_name.as_deref(), Some("fast"));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.containers[0].image.as_deref(), Some("own:1"));
        assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
    }

    #[test]
    fn the_service_exposes_grpc_and_http() {
        let svc = meta_service(&volume(VOL));
        assert_eq!(svc.name_any(), "data-meta");
        let ports: Vec<(String, i32)> =
            svc.spec.unwrap().ports.unwrap().into_iter().map(|p| (p.name.unwrap(), p.port)).collect();
        assert_eq!(ports, [("grpc".to_string(), 7480), ("http".to_string(), 7481)]);
    }
}
