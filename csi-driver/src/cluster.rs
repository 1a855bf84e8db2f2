//! What the controller reads and writes in Kubernetes: the `Volume` a StorageClass names, its
//! metadata server reached with the operator's admin token and CA (`<vol>-admin`, `<vol>-ca`), and
//! each claim's token Secret in the driver's namespace.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fs_core::{AdminClient, ClientTrust};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use parking_lot::Mutex;
use stratusfs_api::Volume;

use crate::error::{CsiError, CsiResult};

/// How long one call to a metadata server may take before the controller answers UNAVAILABLE
/// (the sidecars retry).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The field manager of what the driver writes.
const MANAGER: &str = "stratusfs-csi";

/// A dynamically provisioned claim: volume handle `<namespace>/<volume>/<name>`, its directory
/// `/<name>` in that Volume.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClaimId {
    pub namespace: String,
    pub volume: String,
    pub name: String,
}

impl ClaimId {
    /// `None` for a handle this driver did not make (a static PV's, or garbage).
    pub fn parse(handle: &str) -> Option<ClaimId> {
        let mut parts = handle.split('/');
        let (ns, vol, name) = (parts.next()?, parts.next()?, parts.next()?);
        let ok = |s: &str| {
            !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        (parts.next().is_none() && ok(ns) && ok(vol) && ok(name) && name != "." && name != "..").then(|| ClaimId {
            namespace: ns.into(),
            volume: vol.into(),
            name: name.into(),
        })
    }

    /// The claim's directory in its volume.
    pub fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// The name of the claim's token Secret: the claim's own (a PV's name, `pvc-<uid>`, which the
    /// StorageClass's `${pv.name}` names), or, for a name that cannot be a Secret's (CSI allows
    /// any string; only callers outside Kubernetes send one), `claim-<hash of the handle>`.
    pub fn secret_name(&self) -> String {
        let n = &self.name;
        let dns = n.len() <= 253
            && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.ends_with(|c: char| c.is_ascii_alphanumeric());
        if dns {
            return n.clone();
        }
        use sha2::Digest;
        format!("claim-{}", hex::encode(&sha2::Sha256::digest(self.to_string().as_bytes())[..10]))
    }
}

impl std::fmt::Display for ClaimId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.volume, self.name)
    }
}

/// The driver's view of the cluster.
pub struct Cluster {
    client: Client,
    /// The driver's namespace: claims' token Secrets live here.
    pub namespace: String,
    /// Where to dial a Service's `HOST:PORT` instead (`--service-address`); TLS is still verified
    /// against the Service's name.
    pub service_addresses: BTreeMap<String, String>,
    /// Admin clients by Volume (namespace, name).
    admins: Mutex<HashMap<(String, String), KeptAdmin>>,
}

/// An admin client with the token and CA it was made with (a change of either makes a new one).
struct KeptAdmin {
    token: String,
    ca: String,
    client: AdminClient,
}

impl Cluster {
    pub fn new(client: Client, namespace: String, service_addresses: BTreeMap<String, String>) -> Cluster {
        Cluster { client, namespace, service_addresses, admins: Mutex::new(HashMap::new()) }
    }

    /// The Volume `namespace/name`, which must be Ready.
    pub async fn ready_volume(&self, namespace: &str, name: &str) -> CsiResult<Volume> {
        let api: Api<Volume> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("reading Volume {namespace}/{name}");
        let vol = api.get_opt(name).await.map_err(|e| CsiError::from_kube(&what, e))?.ok_or_else(|| {
            CsiError::NotFound(format!("there is no Volume {namespace}/{name} (kubectl get svol -n {namespace})"))
        })?;
        let ready = vol.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        match ready {
            Some(c) if c.status == "True" => Ok(vol),
            Some(c) => Err(CsiError::Unavailable(format!(
                "Volume {namespace}/{name} is not Ready ({}: {}); claims are served once it is",
                c.reason, c.message
            ))),
            None => Err(CsiError::Unavailable(format!(
                "Volume {namespace}/{name} has no Ready condition yet; is the operator running?"
            ))),
        }
    }

    /// A key of a Secret, if both exist.
    pub async fn secret_value(&self, namespace: &str, name: &str, key: &str) -> CsiResult<Option<String>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("reading Secret {namespace}/{name}");
        let s = api.get_opt(name).await.map_err(|e| CsiError::from_kube(&what, e))?;
        Ok(s.and_then(|s| s.data).and_then(|mut d| d.remove(key)).and_then(|v| String::from_utf8(v.0).ok()))
    }

    async fn required_secret(&self, namespace: &str, name: &str, key: &str) -> CsiResult<String> {
        self.secret_value(namespace, name, key).await?.ok_or_else(|| {
            CsiError::Unavailable(format!(
                "Secret {namespace}/{name} (key {key}) is not there yet; the operator makes it"
            ))
        })
    }

    /// The CA that signs the Volume's server certificate.
    pub async fn ca_pem(&self, vol: &Volume) -> CsiResult<String> {
        let ns = vol.metadata.namespace.as_deref().unwrap_or_default();
        self.required_secret(ns, &vol.ca_secret(), "ca.crt").await
    }

    /// An admin client of the Volume's metadata server (kept between calls while its token and
    /// CA stay the same).
    pub async fn admin(&self, vol: &Volume) -> CsiResult<AdminClient> {
        let ns = vol.metadata.namespace.clone().unwrap_or_default();
        let name = vol.metadata.name.clone().unwrap_or_default();
        let token = self.required_secret(&ns, &vol.admin_secret(), "token").await?;
        let ca = self.ca_pem(vol).await?;
        let key = (ns.clone(), name.clone());
        if let Some(kept) = self.admins.lock().get(&key)
            && kept.token == token
            && kept.ca == ca
        {
            return Ok(kept.client.clone());
        }
        let address = vol.server_address();
        let dial = self.service_addresses.get(&address).cloned().unwrap_or_else(|| address.clone());
        let trust =
            ClientTrust { ca_pem: Some(ca.clone()), server_name: Some(vol.server_host()), ..Default::default() };
        let admin = match tokio::time::timeout(CALL_TIMEOUT, AdminClient::connect(&dial, &trust, &token)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                return Err(CsiError::from_client(&format!("reaching the metadata server of Volume {ns}/{name}"), e));
            }
            Err(_) => {
                return Err(CsiError::Unavailable(format!(
                    "the metadata server of Volume {ns}/{name} at {address} did not answer within {CALL_TIMEOUT:?}"
                )));
            }
        };
        self.admins.lock().insert(key, KeptAdmin { token, ca, client: admin.clone() });
        Ok(admin)
    }

    /// Drops the kept client of a Volume (after a call through it failed).
    pub fn forget(&self, vol: &Volume) {
        let key = (vol.metadata.namespace.clone().unwrap_or_default(), vol.metadata.name.clone().unwrap_or_default());
        self.admins.lock().remove(&key);
    }

    /// The token Secret of a claim, if it exists.
    pub async fn claim_secret(&self, name: &str) -> CsiResult<Option<Secret>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let what = format!("reading Secret {}/{name}", self.namespace);
        api.get_opt(name).await.map_err(|e| CsiError::from_kube(&what, e))
    }

    /// Writes a claim's token Secret (server-side apply).
    pub async fn put_claim_secret(
        &self,
        name: &str,
        data: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
    ) -> CsiResult<()> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
                    ("app.kubernetes.io/component".into(), "claim-token".into()),
                ])),
                annotations: Some(annotations),
                ..Default::default()
            },
            data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let what = format!("writing Secret {}/{name}", self.namespace);
        let mut value = serde_json::to_value(&secret).map_err(|e| CsiError::Internal(format!("{what}: {e}")))?;
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(value))
            .await
            .map_err(|e| CsiError::from_kube(&what, e))?;
        Ok(())
    }

    /// Deletes a claim's token Secret (gone already is fine).
    pub async fn delete_claim_secret(&self, name: &str) -> CsiResult<()> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(CsiError::from_kube(&format!("deleting Secret {}/{name}", self.namespace), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_handles_are_namespace_volume_name() {
        let id = ClaimId::parse("team/data/pvc-1234").unwrap();
        assert_eq!((id.namespace.as_str(), id.volume.as_str(), id.path()), ("team", "data", "/pvc-1234".into()));
        assert_eq!(id.to_string(), "team/data/pvc-1234");
        for bad in ["", "a/b", "a/b/c/d", "a//c", "a/b/..", "a/b/c d", "static-volume-1"] {
            assert_eq!(ClaimId::parse(bad), None, "{bad}");
        }
        assert_eq!(id.secret_name(), "pvc-1234", "a PV's name is its Secret's");
        let odd = ClaimId::parse("team/data/Sanity-Volume-1").unwrap();
        assert!(odd.secret_name().starts_with("claim-") && odd.secret_name().len() == 26, "{}", odd.secret_name());
    }
}
