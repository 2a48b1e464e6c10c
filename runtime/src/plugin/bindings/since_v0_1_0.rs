//! `certline:device@0.1.0`, bound from its frozen text in
//! `wit/since_v0.1.0/` (which never changes: see `FROZEN` in the parent
//! module). Not the newest version any more: as in Zed's extension host,
//! its `Host` traits only convert their arguments to the latest types and
//! forward to the latest implementation ([`super::latest`]), and its
//! exports' types are converted to and from the latest ones here.

use wasmtime::component::Resource;

use super::latest;
use crate::plugin::sandbox::HostState;
pub use crate::plugin::sandbox::LinkHandle;

wasmtime::component::bindgen!({
    path: "../wit/since_v0.1.0",
    world: "plugin",
    // Every host function may trap: a plugin that breaks a rule (runs past its
    // deadline, floods the link, reports twice) is stopped inside the call.
    imports: { default: trappable },
    with: { "certline:device/host.link": LinkHandle },
});

use certline::device::host::{Level, LinkError, Stage};
use exports::certline::device::device as old;
use latest::certline::device::host as new_host;
use latest::exports::certline::device::device as new;

impl From<LinkError> for new_host::LinkError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Timeout => new_host::LinkError::Timeout,
            LinkError::Closed => new_host::LinkError::Closed,
            LinkError::Io(m) => new_host::LinkError::Io(m),
        }
    }
}

impl From<new_host::LinkError> for LinkError {
    fn from(e: new_host::LinkError) -> Self {
        match e {
            new_host::LinkError::Timeout => LinkError::Timeout,
            new_host::LinkError::Closed => LinkError::Closed,
            new_host::LinkError::Io(m) => LinkError::Io(m),
        }
    }
}

impl From<old::Error> for new::Error {
    fn from(e: old::Error) -> Self {
        match e {
            old::Error::Link(l) => new::Error::Link(l.into()),
            old::Error::Protocol(m) => new::Error::Protocol(m),
            old::Error::Device(m) => new::Error::Device(m),
        }
    }
}

impl From<old::PluginInfo> for new::PluginInfo {
    fn from(i: old::PluginInfo) -> Self {
        new::PluginInfo {
            name: i.name,
            version: i.version,
            models: i.models,
        }
    }
}

impl From<old::Identity> for new::Identity {
    fn from(i: old::Identity) -> Self {
        new::Identity {
            device_id: i.device_id,
            fingerprint: i.fingerprint,
        }
    }
}

/// A latest pack as 0.1.0 knows it: 0.1.0 always carries a key, so a pack
/// for a key the device holds cannot be written by a 0.1.0 plugin (the line
/// refuses such a plugin for a device-keygen model at load).
pub fn pack(p: &new::Pack) -> wasmtime::Result<old::Pack> {
    let Some(key_pem) = p.key_pem.clone() else {
        wasmtime::bail!(
            "a {}@0.1.0 plugin cannot install a certificate for a key the device generated (that needs {}@0.2.0)",
            super::PACKAGE,
            super::PACKAGE
        );
    };
    Ok(old::Pack {
        device_id: p.device_id.clone(),
        root_pem: p.root_pem.clone(),
        chain_pem: p.chain_pem.clone(),
        key_pem,
    })
}

impl certline::device::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Debug => new_host::Level::Debug,
            Level::Info => new_host::Level::Info,
            Level::Warn => new_host::Level::Warn,
            Level::Error => new_host::Level::Error,
        };
        new_host::Host::log(self, level, message)
    }

    fn report(&mut self, stage: Stage) -> wasmtime::Result<()> {
        let stage = match stage {
            Stage::Received => new_host::Stage::Received,
        };
        new_host::Host::report(self, stage)
    }
}

impl certline::device::host::HostLink for HostState {
    fn read(
        &mut self,
        link: Resource<LinkHandle>,
        max: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, LinkError>> {
        Ok(new_host::HostLink::read(self, link, max, timeout_ms)?.map_err(Into::into))
    }

    fn write(
        &mut self,
        link: Resource<LinkHandle>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), LinkError>> {
        Ok(new_host::HostLink::write(self, link, data)?.map_err(Into::into))
    }

    fn close(&mut self, link: Resource<LinkHandle>) -> wasmtime::Result<()> {
        new_host::HostLink::close(self, link)
    }

    fn drop(&mut self, link: Resource<LinkHandle>) -> wasmtime::Result<()> {
        new_host::HostLink::drop(self, link)
    }
}
