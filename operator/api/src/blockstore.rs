//! `BlockStore` (short name `bs`): one bucket (and prefix) of S3 or an S3-compatible store, Google
//! Cloud Storage or Azure Blob, with the Secret holding its credentials. Volumes name it; the
//! operator checks it by writing, reading and deleting a probe object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::SecretRef;

/// Where a volume's blocks live. Give exactly one of `s3`, `gcs` and `azure`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "stratusfs.io",
    version = "v1alpha1",
    kind = "BlockStore",
    namespaced,
    doc = "A bucket (and prefix) of S3, GCS or Azure Blob, with the Secret holding its credentials, where Volumes keep their blocks.",
    shortname = "bs",
    category = "stratusfs",
    status = "BlockStoreStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Backend","type":"string","jsonPath":".status.backend"}"#,
    printcolumn = r#"{"name":"Location","type":"string","jsonPath":".status.location"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.s3) ? 1 : 0) + (has(self.gcs) ? 1 : 0) + (has(self.azure) ? 1 : 0) == 1",
    "message": "give exactly one backend: s3, gcs or azure"
}]))]
pub struct BlockStoreSpec {
    /// Amazon S3 or an S3-compatible store (MinIO, Ceph RGW, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3>,
    /// Google Cloud Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<Gcs>,
    /// Azure Blob Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<Azure>,
}

/// An S3 bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3 {
    /// The bucket (it must exist).
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// A key prefix inside the bucket; volumes go under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// The store's URL for S3-compatible stores, e.g. http://minio.storage.svc:9000; default: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^/\s]+(/.*)?$"), length(max = 2048))]
    pub endpoint: Option<String>,
    /// The bucket's region (default us-east-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,
    /// Path-style requests (http://endpoint/bucket/key); default: true when an endpoint is given,
    /// false on AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Server-side encryption the store applies to every object: present and empty for SSE-S3,
    /// with kmsKeyId for SSE-KMS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_encryption: Option<ServerSideEncryption>,
    /// The Secret with the keys `accessKeyId` and `secretAccessKey`.
    pub credentials_secret: SecretRef,
}

/// S3 server-side encryption.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSideEncryption {
    /// The KMS key (SSE-KMS); absent: the store's own keys (SSE-S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: Option<String>,
}

/// A Google Cloud Storage bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gcs {
    /// The bucket (it must exist).
    #[schemars(length(min = 3, max = 222))]
    pub bucket: String,
    /// An object name prefix inside the bucket; volumes go under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// The service's URL, for an emulator; default: Google's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^/\s]+(/.*)?$"), length(max = 2048))]
    pub endpoint: Option<String>,
    /// The Secret with the key `serviceAccount.json`.
    pub credentials_secret: SecretRef,
}

/// An Azure Blob container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Azure {
    /// The container (it must exist).
    #[schemars(length(min = 3, max = 63))]
    pub container: String,
    /// The storage account.
    #[schemars(length(min = 1, max = 64))]
    pub account: String,
    /// A blob name prefix inside the container; volumes go under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// The service's URL, for Azurite or a sovereign cloud; default: the account's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^/\s]+(/.*)?$"), length(max = 2048))]
    pub endpoint: Option<String>,
    /// The Secret with the key `accountKey`.
    pub credentials_secret: SecretRef,
}

/// What the operator found when it checked the store.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockStoreStatus {
    /// Ready: a probe object was written, read and deleted with the credentials; its reason and
    /// message say what failed otherwise (access denied, no such bucket, endpoint unreachable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// s3, gcs or azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// bucket/prefix (container/prefix on Azure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
