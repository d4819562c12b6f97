//! CSI Identity: who the driver is and what it offers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Driver;
use crate::config::Service;
use crate::proto::identity_server::Identity;
use crate::proto::plugin_capability::{self, volume_expansion, Service as SvcCap};
use crate::proto::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};
use crate::wit::exports::wasmcsi::plugin::identity::Features;

pub(crate) struct IdentityService(pub(crate) Arc<Driver>);

fn service(kind: plugin_capability::service::Type) -> PluginCapability {
    PluginCapability {
        r#type: Some(plugin_capability::Type::Service(SvcCap {
            r#type: kind as i32,
        })),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        let plugins = self
            .0
            .dispatch
            .plugins()
            .iter()
            .map(|p| (format!("plugin.{}", p.name), p.info.version.clone()))
            .collect();
        Ok(Response::new(GetPluginInfoResponse {
            name: self.0.config.driver.name.clone(),
            vendor_version: crate::VERSION.to_string(),
            manifest: plugins,
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::service::Type;
        let driver = &self.0;
        let mut capabilities = Vec::new();
        if driver.runs(Service::Controller) {
            capabilities.push(service(Type::ControllerService));
        }
        if driver.runs(Service::Controller) && driver.dispatch.any_has(Features::GROUP_SNAPSHOTS) {
            capabilities.push(service(Type::GroupControllerService));
        }
        if driver.dispatch.any_has(Features::NODE_LOCAL) {
            capabilities.push(service(Type::VolumeAccessibilityConstraints));
        }
        if driver.dispatch.any_has(Features::CONTROLLER_EXPAND)
            || driver.dispatch.any_has(Features::NODE_EXPAND)
        {
            capabilities.push(PluginCapability {
                r#type: Some(plugin_capability::Type::VolumeExpansion(
                    plugin_capability::VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    },
                )),
            });
        }
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        // The server only listens once every plugin has loaded.
        let ready = !self.0.dispatch.plugins().is_empty();
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}
