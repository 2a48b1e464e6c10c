//! `certline:device@0.2.0`, bound from its frozen text in
//! `wit/since_v0.2.0/` (which never changes: see `FROZEN` in the parent
//! module). The newest version: its `Host` traits are the ones the host
//! implements directly; they only translate and hand each call to
//! [`HostState`], where the caps live. Older versions forward to these.

use wasmtime::component::Resource;

use crate::link::LinkFailure;
use crate::plugin::sandbox::HostState;
pub use crate::plugin::sandbox::LinkHandle;

wasmtime::component::bindgen!({
    path: "../wit/since_v0.2.0",
    world: "plugin",
    // Every host function may trap: a plugin that breaks a rule (runs past its
    // deadline, floods the link, reports twice) is stopped inside the call.
    imports: { default: trappable },
    with: { "certline:device/host.link": LinkHandle },
});

use certline::device::host::{Level, LinkError, Stage};

fn to_wit(e: LinkFailure) -> LinkError {
    match e {
        LinkFailure::Timeout => LinkError::Timeout,
        LinkFailure::Closed => LinkError::Closed,
        LinkFailure::Io(m) => LinkError::Io(m),
    }
}

impl certline::device::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error => tracing::Level::ERROR,
        };
        HostState::log(self, level, &message)
    }

    fn report(&mut self, stage: Stage) -> wasmtime::Result<()> {
        match stage {
            Stage::Received => self.report_received(),
        }
    }
}

impl certline::device::host::HostLink for HostState {
    fn read(
        &mut self,
        link: Resource<LinkHandle>,
        max: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, LinkError>> {
        Ok(self.link_read(&link, max, timeout_ms)?.map_err(to_wit))
    }

    fn write(
        &mut self,
        link: Resource<LinkHandle>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), LinkError>> {
        Ok(self.link_write(&link, &data)?.map_err(to_wit))
    }

    fn close(&mut self, link: Resource<LinkHandle>) -> wasmtime::Result<()> {
        self.link_close(&link)
    }

    fn drop(&mut self, _link: Resource<LinkHandle>) -> wasmtime::Result<()> {
        // The host only ever lends links (borrow<link>); the entry is removed
        // when the call that lent it ends.
        Ok(())
    }
}
