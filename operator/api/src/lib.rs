//! The stratusfs API (group `stratusfs.io`, version `v1alpha1`): the `BlockStore` and `Volume`
//! custom resources as Rust types. They are the one definition: `crds/` and the chart's CRDs are
//! generated from them (`cargo run -p stratusfs-api --bin crdgen`), and every rule a user's
//! manifest must pass is in their schema, so `kubectl apply` refuses a bad one with the field's
//! path before anything is stored (docs/operator.md).
//!
//! `ProxyGroup` comes with the proxy server.

pub mod blockstore;
pub mod volume;

pub use blockstore::{BlockStore, BlockStoreSpec, BlockStoreStatus};
pub use volume::{Volume, VolumeSpec, VolumeStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every stratusfs resource.
pub const GROUP: &str = "stratusfs.io";

/// A Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// The Secret's name (in the same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A `--service-address SERVICE_HOST:PORT=HOST:PORT` flag of the operator and the CSI driver:
/// dial a Service's address somewhere else (a port-forward, the tests), still verifying TLS for
/// the Service's name.
pub fn parse_service_address(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((a, b)) if a.contains(':') && b.contains(':') => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("{s:?}: give SERVICE_HOST:PORT=HOST:PORT, e.g. data-meta.team.svc:7480=127.0.0.1:7480")),
    }
}

/// Every CRD, with the file it is kept in.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![("blockstores.yaml", BlockStore::crd()), ("volumes.yaml", Volume::crd())]
}

/// A CRD as the YAML kept in `crds/` and in the chart.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    Ok(format!(
        "# Generated from operator/api (the Rust types) by `cargo run -p stratusfs-api --bin crdgen`; do not edit.\n{}",
        serde_saphyr::to_string(crd)?
    ))
}

/// The folders the CRDs are written to, relative to the repository's root.
pub const CRD_DIRS: [&str; 2] = ["crds", "charts/stratusfs/crds"];

#[cfg(test)]
mod tests {
    use super::*;

    /// CI fails when `crds/` or the chart's CRDs are not what the types make.
    #[test]
    fn the_committed_crds_are_the_types() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for dir in CRD_DIRS {
            for (file, crd) in crds() {
                let want = crd_yaml(&crd).unwrap();
                let have = std::fs::read_to_string(root.join(dir).join(file)).unwrap_or_default();
                assert!(have == want, "{dir}/{file} is stale: run `cargo run -p stratusfs-api --bin crdgen`");
            }
        }
    }

    /// Every property of every CRD says what it is (`kubectl explain` answers for each).
    #[test]
    fn every_field_has_a_description() {
        fn walk(path: &str, s: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = s.get("properties").and_then(|p| p.as_object()) {
                for (k, v) in props {
                    let p = format!("{path}.{k}");
                    if v.get("description").is_none() && !["metadata", "apiVersion", "kind"].contains(&k.as_str()) {
                        missing.push(p.clone());
                    }
                    walk(&p, v, missing);
                }
            }
            if let Some(items) = s.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        for (_, crd) in crds() {
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
            let mut missing = Vec::new();
            walk(&crd.spec.names.kind, &schema["openAPIV3Schema"], &mut missing);
            assert!(missing.is_empty(), "no description: {missing:?}");
        }
    }
}
