//! The Controller service: dynamic provisioning. A claim is a directory `/<pv-name>` in the Volume
//! a StorageClass names, with a quota (bytes: the request; inodes: the `inodes` parameter) and a
//! token limited to it, made in one admin call; its token goes to a Secret `<pv-name>` in the
//! driver's namespace (with `ca.crt`, and `encryptionSecret` for an encrypted Volume), which the
//! StorageClass names as the node-publish Secret. Deleting removes the directory in the
//! background; expanding raises the quota.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use fs_core::admin::{ClaimSpec, ClaimState, Quota};
use parking_lot::Mutex;
use stratusfs_api::Volume;
use tonic::{Request, Response, Status};

use crate::caps;
use crate::cluster::{ClaimId, Cluster};
use crate::csi::controller_server::Controller;
use crate::csi::controller_service_capability::{Type, rpc};
use crate::csi::{self, ControllerServiceCapability};
use crate::error::{CsiError, CsiResult};

/// The StorageClass parameter naming the Volume (`NAME` in the claim's namespace, or `NS/NAME`).
pub const PARAM_VOLUME: &str = "volume";
/// The StorageClass parameter limiting a claim's inodes.
pub const PARAM_INODES: &str = "inodes";
/// What external-provisioner adds with `--extra-create-metadata`.
const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
/// Parameters of the sidecars (secrets, fsType, the claim's name), not ours to check.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";

/// The annotation of a claim's Secret with its token's id: how a repeated CreateVolume knows the
/// Secret holds the claim's valid token.
const TOKEN_ID: &str = "stratusfs.io/token-id";

/// A claim directory's mode: anyone may write (as a PersistentVolume's root usually allows);
/// a pod's fsGroup narrows it on the node (VOLUME_MOUNT_GROUP).
const CLAIM_MODE: u32 = 0o777;

pub struct ControllerService {
    cluster: Arc<Cluster>,
    /// Claims a call is working on: a second call for the same one gets ABORTED.
    busy: Mutex<HashSet<String>>,
}

/// Marks a claim busy until dropped.
struct Busy<'a>(&'a Mutex<HashSet<String>>, String);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

impl ControllerService {
    pub fn new(cluster: Arc<Cluster>) -> ControllerService {
        ControllerService { cluster, busy: Mutex::new(HashSet::new()) }
    }

    fn busy(&self, name: &str) -> CsiResult<Busy<'_>> {
        if !self.busy.lock().insert(name.to_string()) {
            return Err(CsiError::Aborted(format!("an operation on {name} is in progress; try again")));
        }
        Ok(Busy(&self.busy, name.to_string()))
    }

    /// The claim a handle names and its Volume; NOT_FOUND when either is gone.
    async fn existing(&self, handle: &str) -> CsiResult<(ClaimId, Volume, ClaimState)> {
        let id = ClaimId::parse(handle).ok_or_else(|| {
            CsiError::NotFound(format!("volume {handle:?} is not one this driver made (NAMESPACE/VOLUME/NAME)"))
        })?;
        let vol = self.cluster.ready_volume(&id.namespace, &id.volume).await?;
        let mut admin = self.cluster.admin(&vol).await?;
        let claim = admin.claim(&id.volume, &id.path()).await.map_err(|e| {
            self.cluster.forget(&vol);
            CsiError::from_client(&format!("looking up claim {id}"), e)
        })?;
        let claim = claim.ok_or_else(|| {
            CsiError::NotFound(format!(
                "volume {id} does not exist (no claim {} in Volume {}/{})",
                id.path(),
                id.namespace,
                id.volume
            ))
        })?;
        Ok((id, vol, claim))
    }

    async fn create(&self, req: csi::CreateVolumeRequest) -> CsiResult<csi::Volume> {
        if req.name.is_empty() {
            return Err(CsiError::InvalidArgument("name is missing".into()));
        }
        caps::check_all(&req.volume_capabilities)?;
        if req.volume_content_source.is_some() {
            return Err(CsiError::InvalidArgument(
                "volume_content_source: stratusfs claims start empty (cloning and snapshots are not offered)".into(),
            ));
        }
        let mut volume_param = None;
        let mut inodes = 0;
        for (k, v) in &req.parameters {
            match k.as_str() {
                PARAM_VOLUME => volume_param = Some(v.as_str()),
                PARAM_INODES => {
                    inodes = v.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        CsiError::InvalidArgument(format!("parameter inodes={v:?}: give a whole number of at least 1"))
                    })?
                }
                k if k.starts_with(SIDECAR_PREFIX) => {}
                k => {
                    return Err(CsiError::InvalidArgument(format!(
                        "unknown StorageClass parameter {k:?}: stratusfs knows `volume` and `inodes`"
                    )));
                }
            }
        }
        let volume_param = volume_param.ok_or_else(|| {
            CsiError::InvalidArgument(
                "the StorageClass names no Volume: give parameters.volume (NAME or NAMESPACE/NAME)".into(),
            )
        })?;
        let (namespace, volume) = match volume_param.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => match req.parameters.get(PVC_NAMESPACE) {
                Some(ns) => (ns.clone(), volume_param.to_string()),
                None => {
                    return Err(CsiError::InvalidArgument(format!(
                        "parameters.volume {volume_param:?} has no namespace and the claim's is not known: give NAMESPACE/NAME, or run external-provisioner with --extra-create-metadata"
                    )));
                }
            },
        };
        let id = ClaimId { namespace, volume, name: req.name.clone() };
        if ClaimId::parse(&id.to_string()).as_ref() != Some(&id) {
            return Err(CsiError::InvalidArgument(format!(
                "volume handle {id:?} is not NAMESPACE/VOLUME/NAME of plain names; check parameters.volume and the name"
            )));
        }
        let bytes = capacity(req.capacity_range.as_ref())?;
        let _busy = self.busy(&req.name)?;
        let vol = match self.cluster.ready_volume(&id.namespace, &id.volume).await {
            Err(CsiError::NotFound(m)) => {
                return Err(CsiError::InvalidArgument(format!("parameters.volume names no Volume: {m}")));
            }
            r => r?,
        };
        let mut admin = self.cluster.admin(&vol).await?;
        let failed = |what: &str, e| {
            self.cluster.forget(&vol);
            CsiError::from_client(&format!("{what} claim {id}"), e)
        };
        let secret = self.cluster.claim_secret(&id.secret_name()).await?;
        let secret_token =
            secret.as_ref().and_then(|s| s.metadata.annotations.as_ref()).and_then(|a| a.get(TOKEN_ID)).cloned();
        let existing = admin.claim(&id.volume, &id.path()).await.map_err(|e| failed("looking up", e))?;
        let answer = |bytes: u64| csi::Volume {
            capacity_bytes: bytes as i64,
            volume_id: id.to_string(),
            volume_context: [("source".to_string(), format!("{}/{}", vol.endpoint(), id.name))].into(),
            ..Default::default()
        };
        if let Some(claim) = &existing
            && secret_token.as_deref() == Some(claim.token_id.as_str())
        {
            // Made by an earlier call: the same request is answered the same way.
            let had = claim.quota.as_ref().map(|q| q.quota).unwrap_or_default();
            if had.bytes != bytes || had.inodes != inodes {
                return Err(CsiError::AlreadyExists(format!(
                    "volume {} exists with {} bytes and {} inodes; this request asks for {bytes} and {inodes}",
                    req.name, had.bytes, had.inodes
                )));
            }
            return Ok(answer(bytes));
        }
        let spec =
            ClaimSpec { path: id.path(), quota: Quota { bytes, inodes }, mode: CLAIM_MODE, ..Default::default() };
        let claim = admin.create_claim(&id.volume, &spec).await.map_err(|e| failed("making", e))?;
        let ns = id.namespace.as_str();
        let mut data = BTreeMap::from([
            ("token".to_string(), claim.token.token.clone()),
            ("ca.crt".to_string(), self.cluster.ca_pem(&vol).await?),
        ]);
        if let Some(enc) = &vol.spec.encryption {
            let name = &enc.secret_ref.name;
            let secret = self.cluster.secret_value(ns, name, "secret").await?.ok_or_else(|| {
                CsiError::Unavailable(format!(
                    "the encryption Secret {ns}/{name} of Volume {ns}/{} has no key `secret`",
                    id.volume
                ))
            })?;
            data.insert("encryptionSecret".into(), secret);
        }
        let annotations = BTreeMap::from([
            (TOKEN_ID.to_string(), claim.token.id.clone()),
            ("stratusfs.io/volume-handle".to_string(), id.to_string()),
        ]);
        self.cluster.put_claim_secret(&id.secret_name(), data, annotations).await?;
        tracing::info!(claim = %id, bytes, inodes, created = claim.created, token = %claim.token.id, "claim made");
        Ok(answer(bytes))
    }

    async fn delete(&self, req: csi::DeleteVolumeRequest) -> CsiResult<()> {
        if req.volume_id.is_empty() {
            return Err(CsiError::InvalidArgument("volume_id is missing".into()));
        }
        let Some(id) = ClaimId::parse(&req.volume_id) else {
            tracing::info!(volume = %req.volume_id, "delete of a volume this driver did not make: nothing to do");
            return Ok(());
        };
        let _busy = self.busy(&id.name)?;
        let vol = match self.cluster.ready_volume(&id.namespace, &id.volume).await {
            Ok(v) => v,
            Err(CsiError::NotFound(m)) => {
                // The Volume is gone, and its claims with it (or kept by its own deletion policy).
                tracing::info!(claim = %id, "{m}: nothing to delete but the claim's Secret");
                return self.cluster.delete_claim_secret(&id.secret_name()).await;
            }
            Err(e) => return Err(e),
        };
        let mut admin = self.cluster.admin(&vol).await?;
        admin.delete_claim(&id.volume, &id.path()).await.map_err(|e| {
            self.cluster.forget(&vol);
            CsiError::from_client(&format!("deleting claim {id}"), e)
        })?;
        self.cluster.delete_claim_secret(&id.secret_name()).await?;
        tracing::info!(claim = %id, "claim deleted; its directory is emptied in the background");
        Ok(())
    }

    async fn expand(&self, req: csi::ControllerExpandVolumeRequest) -> CsiResult<u64> {
        if req.volume_id.is_empty() {
            return Err(CsiError::InvalidArgument("volume_id is missing".into()));
        }
        let bytes = capacity(req.capacity_range.as_ref())?;
        if bytes == 0 {
            return Err(CsiError::InvalidArgument("capacity_range is missing: give the new size".into()));
        }
        let (id, vol, claim) = self.existing(&req.volume_id).await?;
        let _busy = self.busy(&id.name)?;
        let had = claim.quota.map(|q| q.quota).unwrap_or_default();
        if had.bytes >= bytes {
            return Ok(had.bytes);
        }
        let mut admin = self.cluster.admin(&vol).await?;
        admin.set_quota(&id.volume, &id.path(), Quota { bytes, inodes: had.inodes }).await.map_err(|e| {
            self.cluster.forget(&vol);
            CsiError::from_client(&format!("raising the quota of claim {id}"), e)
        })?;
        tracing::info!(claim = %id, from = had.bytes, to = bytes, "claim expanded");
        Ok(bytes)
    }
}

/// The quota a capacity range asks for (0: none given, no byte limit).
fn capacity(range: Option<&csi::CapacityRange>) -> CsiResult<u64> {
    let Some(r) = range else { return Ok(0) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(CsiError::InvalidArgument("capacity_range: sizes cannot be negative".into()));
    }
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(CsiError::OutOfRange(format!(
            "capacity_range: required_bytes {} is more than limit_bytes {}",
            r.required_bytes, r.limit_bytes
        )));
    }
    // The quota is exactly the request (bytes need no rounding); a limit alone is the size.
    Ok(if r.required_bytes > 0 { r.required_bytes } else { r.limit_bytes } as u64)
}

fn rpc_capability(t: rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(Type::Rpc(csi::controller_service_capability::Rpc { r#type: t as i32 })),
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let volume = self.create(req.into_inner()).await?;
        Ok(Response::new(csi::CreateVolumeResponse { volume: Some(volume) }))
    }

    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        self.delete(req.into_inner()).await?;
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = req.into_inner();
        if req.volume_id.is_empty() {
            return Err(CsiError::InvalidArgument("volume_id is missing".into()).into());
        }
        if req.volume_capabilities.is_empty() {
            return Err(CsiError::InvalidArgument("volume_capabilities is missing: give at least one".into()).into());
        }
        self.existing(&req.volume_id).await?;
        let refused: Vec<String> = req.volume_capabilities.iter().filter_map(|c| caps::check(c).err()).collect();
        let r = if refused.is_empty() {
            csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: req.mutable_parameters,
                }),
                message: String::new(),
            }
        } else {
            csi::ValidateVolumeCapabilitiesResponse { confirmed: None, message: refused.join("; ") }
        };
        Ok(Response::new(r))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        let capabilities = [rpc::Type::CreateDeleteVolume, rpc::Type::ExpandVolume, rpc::Type::SingleNodeMultiWriter]
            .into_iter()
            .map(rpc_capability)
            .collect();
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse { capabilities }))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let bytes = self.expand(req.into_inner()).await?;
        Ok(Response::new(csi::ControllerExpandVolumeResponse {
            capacity_bytes: bytes as i64,
            node_expansion_required: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capacity_range_is_the_quota() {
        let r = |required_bytes, limit_bytes| csi::CapacityRange { required_bytes, limit_bytes };
        assert_eq!(capacity(None).unwrap(), 0);
        assert_eq!(capacity(Some(&r(10 << 30, 0))).unwrap(), 10 << 30);
        assert_eq!(capacity(Some(&r(0, 5 << 30))).unwrap(), 5 << 30);
        assert_eq!(capacity(Some(&r(1, 2))).unwrap(), 1);
        assert!(matches!(capacity(Some(&r(3, 2))), Err(CsiError::OutOfRange(_))));
        assert!(matches!(capacity(Some(&r(-1, 0))), Err(CsiError::InvalidArgument(_))));
    }
}
