//! The Identity service: the driver's name and version, what it serves, and whether it is ready.

use tonic::{Request, Response, Status};

use crate::DRIVER_NAME;
use crate::csi::identity_server::Identity;
use crate::csi::plugin_capability::{Service, Type, service, volume_expansion};
use crate::csi::{self, PluginCapability};

/// Identity, as the process serves it: with the Controller service or not.
pub struct IdentityService {
    pub controller: bool,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = Vec::new();
        if self.controller {
            capabilities.push(PluginCapability {
                r#type: Some(Type::Service(Service { r#type: service::Type::ControllerService as i32 })),
            });
            // A claim's size is its quota: it grows while mounted.
            capabilities.push(PluginCapability {
                r#type: Some(Type::VolumeExpansion(csi::plugin_capability::VolumeExpansion {
                    r#type: volume_expansion::Type::Online as i32,
                })),
            });
        }
        Ok(Response::new(csi::GetPluginCapabilitiesResponse { capabilities }))
    }

    async fn probe(&self, _: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}
