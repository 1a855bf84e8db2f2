//! `Volume` (short name `svol`): a stratusfs filesystem. The operator runs its metadata server (a
//! StatefulSet `<name>-meta`), creates the volume on it with its BlockStore's spec, and keeps the
//! Secrets mounts use; pods reach it through the CSI driver.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::SecretRef;

/// A stratusfs volume: its block store, block size, compression, history, quota, encryption and
/// metadata server.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "stratusfs.io",
    version = "v1alpha1",
    kind = "Volume",
    namespaced,
    doc = "A stratusfs volume: a POSIX filesystem whose blocks live in a BlockStore and whose metadata server the operator runs.",
    shortname = "svol",
    category = "stratusfs",
    status = "VolumeStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"BlockStore","type":"string","jsonPath":".spec.blockStore"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","format":"int64","jsonPath":".status.usage.bytes"}"#,
    printcolumn = r#"{"name":"Sessions","type":"integer","jsonPath":".status.sessions"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.encryption) == has(oldSelf.encryption) && (!has(self.encryption) || self.encryption == oldSelf.encryption)",
    "message": "encryption is immutable: it cannot be added, removed or pointed at another Secret after the volume is created (rekey by giving the Secret a previousSecret)",
    "fieldPath": ".encryption"
}]))]
pub struct VolumeSpec {
    /// The BlockStore (in the same namespace) that holds the volume's blocks. Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == oldSelf",
        "message": "blockStore is immutable: the volume's blocks are in the store it was created on"
    }]))]
    pub block_store: String,
    /// The size of the blocks files are stored in: 256Ki, 512Ki, 1Mi, 2Mi, 4Mi or 8Mi. Immutable.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "blockSize is immutable"}]))]
    pub block_size: BlockSize,
    /// How each 64 KiB chunk of a block is compressed before it is stored: none, lz4 or zstd.
    #[serde(default)]
    pub compression: Compression,
    /// How long replaced and deleted data is kept (point-in-time mounts reach back this far), as a
    /// Go duration: a number and a unit (ns, us, ms, s, m, h), e.g. 168h or 1h30m; 0 keeps none.
    #[serde(default = "default_retention")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$"), length(max = 64))]
    pub retention: String,
    /// Limits on the whole volume; none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// End-to-end encryption (docs/encryption.md): data, names and xattr values are sealed in the
    /// node plugin with a key the operator wraps under the Secret's `secret`; set only at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// The metadata server the operator runs for the volume.
    #[serde(default)]
    pub metadata_server: MetadataServer,
    /// What deleting the Volume does: Retain keeps the blocks and the metadata PVC (a Volume of the
    /// same name adopts them again); Delete removes both.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_retention() -> String {
    "168h".into()
}

/// A block size.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BlockSize {
    #[serde(rename = "256Ki")]
    Ki256,
    #[serde(rename = "512Ki")]
    Ki512,
    #[serde(rename = "1Mi")]
    Mi1,
    #[serde(rename = "2Mi")]
    Mi2,
    #[default]
    #[serde(rename = "4Mi")]
    Mi4,
    #[serde(rename = "8Mi")]
    Mi8,
}

impl BlockSize {
    pub fn bytes(self) -> u32 {
        match self {
            BlockSize::Ki256 => 256 << 10,
            BlockSize::Ki512 => 512 << 10,
            BlockSize::Mi1 => 1 << 20,
            BlockSize::Mi2 => 2 << 20,
            BlockSize::Mi4 => 4 << 20,
            BlockSize::Mi8 => 8 << 20,
        }
    }
}

/// A compression.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    #[default]
    Lz4,
    Zstd,
}

/// A deletion policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

/// Limits on a volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// The most bytes the volume's files may hold: an integer or a quantity such as 100Gi, > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "isQuantity(string(self)) && quantity(string(self)).compareTo(quantity('0')) > 0",
        "message": "quota.bytes must be a positive integer or quantity, such as 100Gi"
    }]))]
    pub bytes: Option<Quantity>,
    /// The most files, directories and links the volume may hold (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub inodes: Option<i64>,
}

/// A volume's encryption.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// The Secret with the key `secret` (and `previousSecret` while the operator rekeys from it).
    pub secret_ref: SecretRef,
}

/// The metadata server's pod and storage.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataServer {
    /// The volume for its database.
    #[serde(default)]
    pub storage: MetadataStorage,
    /// CPU and memory for its container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Labels of the nodes it may run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints it tolerates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Where it may be scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Its image; default: the operator's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
}

/// The metadata server's PVC.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) >= 0",
        "message": "metadataServer.storage.size may only grow",
        "fieldPath": ".size"
    },
    {
        "rule": "has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
        "message": "metadataServer.storage.storageClassName is immutable",
        "fieldPath": ".storageClassName"
    }
]))]
pub struct MetadataStorage {
    /// The PVC's size (it may grow, never shrink): a quantity such as 10Gi.
    #[serde(default = "default_storage")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "isQuantity(string(self)) && quantity(string(self)).compareTo(quantity('0')) > 0",
        "message": "metadataServer.storage.size must be a positive quantity, such as 10Gi"
    }]))]
    pub size: Quantity,
    /// The PVC's StorageClass; default: the cluster's default. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

impl Default for MetadataStorage {
    fn default() -> Self {
        MetadataStorage { size: default_storage(), storage_class_name: None }
    }
}

fn default_storage() -> Quantity {
    Quantity("10Gi".into())
}

/// What the operator and the metadata server report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// Pending, Ready, Degraded or Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Ready, BlockStoreReady and MetadataReady, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// What mounts give as their source: stratusfs://<name>-meta.<namespace>.svc:7480/<name>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The metadata server's UUID of the volume (a new one would mean a lost database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// Bytes and inodes in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Live mount sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<i64>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A volume's phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Ready,
    Degraded,
    Deleting,
}

/// Space and files in use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Bytes of file data.
    pub bytes: i64,
    /// Files, directories and links.
    pub inodes: i64,
}

impl VolumeSpec {
    /// `retention` in whole seconds (the schema has checked its form; this says what is wrong
    /// with anything else).
    pub fn retention_secs(&self) -> Result<i64, String> {
        go_duration_secs(&self.retention)
    }

    /// The quota as bytes and inodes, 0 meaning no limit.
    pub fn quota_limits(&self) -> Result<(u64, u64), String> {
        let Some(q) = &self.quota else { return Ok((0, 0)) };
        let bytes = match &q.bytes {
            Some(b) => quantity_bytes(&b.0)?,
            None => 0,
        };
        Ok((bytes, q.inodes.unwrap_or(0).max(0) as u64))
    }
}

/// A Go duration (`168h`, `1h30m`, `1.5h`, `0`) in whole seconds, rounded down.
pub fn go_duration_secs(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a Go duration such as 168h or 1h30m");
    if s == "0" {
        return Ok(0);
    }
    let mut nanos: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let n: f64 = rest[..end].parse().map_err(|_| bad())?;
        rest = &rest[end..];
        let (unit, len) = [("ns", 1e0), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
            .iter()
            .filter(|(u, _)| rest.starts_with(u))
            .max_by_key(|(u, _)| u.len())
            .map(|(u, f)| (*f, u.len()))
            .ok_or_else(bad)?;
        nanos += n * unit;
        rest = &rest[len..];
    }
    Ok((nanos / 1e9).floor() as i64)
}

/// A Kubernetes quantity (`100Gi`, `5G`, `1e9`, `1.5Mi`, `12345`) in bytes, rounded up.
pub fn quantity_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a quantity of bytes such as 100Gi or 5G");
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let digits: u128 = format!("{whole}{frac}").parse().map_err(|_| bad())?;
    let (mul, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        e if e.starts_with(['e', 'E']) => {
            let exp: u32 = e[1..].trim_start_matches('+').parse().map_err(|_| bad())?;
            (10u128.checked_pow(exp).ok_or_else(bad)?, 1)
        }
        _ => return Err(bad()),
    };
    let div = div * 10u128.pow(frac.len() as u32);
    let bytes = (digits.checked_mul(mul).ok_or_else(bad)?).div_ceil(div);
    u64::try_from(bytes).map_err(|_| bad())
}

/// The metadata server's gRPC (TLS) port.
pub const GRPC_PORT: u16 = 7480;

/// What the operator makes for a Volume, by name: the CSI driver and later parts find them so
/// (docs/operator.md).
impl Volume {
    fn name_and_namespace(&self) -> (&str, &str) {
        (self.metadata.name.as_deref().unwrap_or_default(), self.metadata.namespace.as_deref().unwrap_or_default())
    }

    /// `<vol>-meta`: the StatefulSet and Service of its metadata server.
    pub fn meta_name(&self) -> String {
        format!("{}-meta", self.name_and_namespace().0)
    }

    /// `<vol>-admin`: the account token (`token`).
    pub fn admin_secret(&self) -> String {
        format!("{}-admin", self.name_and_namespace().0)
    }

    /// `<vol>-ca`: the CA that signs its server's certificate (`ca.crt`).
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.name_and_namespace().0)
    }

    /// `<vol>-meta.<ns>.svc`: the name its server's certificate carries.
    pub fn server_host(&self) -> String {
        format!("{}.{}.svc", self.meta_name(), self.name_and_namespace().1)
    }

    /// `<vol>-meta.<ns>.svc:7480`.
    pub fn server_address(&self) -> String {
        format!("{}:{GRPC_PORT}", self.server_host())
    }

    /// `stratusfs://<vol>-meta.<ns>.svc:7480/<vol>`: where mounts reach the volume.
    pub fn endpoint(&self) -> String {
        format!("stratusfs://{}/{}", self.server_address(), self.name_and_namespace().0)
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn go_durations_are_read_as_go_reads_them() {
        for (s, secs) in [("168h", 604_800), ("1h30m", 5_400), ("1.5h", 5_400), ("0", 0), ("90s", 90), ("1500ms", 1)] {
            assert_eq!(go_duration_secs(s), Ok(secs), "{s}");
        }
        for s in ["7d", "", "h", "-1h", "1x"] {
            assert!(go_duration_secs(s).is_err(), "{s}");
        }
    }

    #[test]
    fn quantities_are_read_as_kubernetes_reads_them() {
        for (s, b) in [
            ("100Gi", 100 << 30),
            ("5G", 5_000_000_000),
            ("1e9", 1_000_000_000),
            ("1.5Mi", 1_572_864),
            ("12345", 12_345),
            ("1500m", 2),
        ] {
            assert_eq!(quantity_bytes(s), Ok(b), "{s}");
        }
        for s in ["", "Gi", "1Zi", "-1", "1e99"] {
            assert!(quantity_bytes(s).is_err(), "{s}");
        }
    }
}
