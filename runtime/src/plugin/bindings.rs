//! The WIT bindings, one module per supported interface version, and the one
//! host implementation they forward to (the pattern of Zed's extension host).
//!
//! Supporting a new interface version means: copy the old `wit/` into
//! `wit/since_vX.Y.Z/`, add a `since_vX_Y_Z` module generated from it whose
//! `Host` traits convert to and forward to the latest implementation, add a
//! [`Bindings`] variant, and list the version in [`SUPPORTED`].

use std::time::{Duration, Instant};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::link::{DeviceLink, LinkFailure};

/// The interface versions this host can run, oldest first; the last is the one
/// whose `Host` traits the host implements directly.
pub const SUPPORTED: &[Version] = &[Version {
    major: 0,
    minor: 1,
    patch: 0,
}];

/// The WIT package and the interface a plugin must export.
pub const PACKAGE: &str = "certline:device";
pub const EXPORT: &str = "certline:device/device";

pub mod since_v0_1_0 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        with: { "certline:device/host.link": super::LinkHandle },
    });
}

/// The newest interface: the one [`HostState`] implements.
pub use since_v0_1_0 as latest;

pub use latest::certline::device::host::{Level, LinkError, Stage};
pub use latest::exports::certline::device::device::{
    Error as PluginError, Identity, Pack, PluginInfo,
};

/// A pre-instantiated plugin, by interface version.
#[derive(Clone)]
pub enum Bindings {
    V0_1(since_v0_1_0::PluginPre<HostState>),
}

/// An instance of a plugin, by interface version; its calls take and return the
/// latest types.
pub enum Instance {
    V0_1(since_v0_1_0::Plugin),
}

impl Bindings {
    /// Bindings of `version` (one of [`SUPPORTED`]) for a pre-instantiated component.
    pub fn new(
        version: Version,
        pre: wasmtime::component::InstancePre<HostState>,
    ) -> wasmtime::Result<Bindings> {
        match (version.major, version.minor) {
            (0, 1) => Ok(Bindings::V0_1(since_v0_1_0::PluginPre::new(pre)?)),
            _ => wasmtime::bail!("no bindings for {PACKAGE}@{version}"),
        }
    }

    pub fn instantiate(
        &self,
        store: &mut wasmtime::Store<HostState>,
    ) -> wasmtime::Result<Instance> {
        match self {
            Bindings::V0_1(pre) => Ok(Instance::V0_1(pre.instantiate(store)?)),
        }
    }
}

impl Instance {
    pub fn info(&self, store: &mut wasmtime::Store<HostState>) -> wasmtime::Result<PluginInfo> {
        match self {
            Instance::V0_1(p) => p.certline_device_device().call_info(store),
        }
    }

    pub fn read_identity(
        &self,
        store: &mut wasmtime::Store<HostState>,
        link: Resource<LinkHandle>,
    ) -> wasmtime::Result<Result<Identity, PluginError>> {
        match self {
            Instance::V0_1(p) => p.certline_device_device().call_read_identity(store, link),
        }
    }

    pub fn write_pack(
        &self,
        store: &mut wasmtime::Store<HostState>,
        link: Resource<LinkHandle>,
        pack: &Pack,
    ) -> wasmtime::Result<Result<(), PluginError>> {
        match self {
            Instance::V0_1(p) => p
                .certline_device_device()
                .call_write_pack(store, link, pack),
        }
    }

    pub fn prove_possession(
        &self,
        store: &mut wasmtime::Store<HostState>,
        link: Resource<LinkHandle>,
        challenge: &[u8],
    ) -> wasmtime::Result<Result<Vec<u8>, PluginError>> {
        match self {
            Instance::V0_1(p) => p
                .certline_device_device()
                .call_prove_possession(store, link, challenge),
        }
    }
}

/// Adds the latest host implementation and a locked-down WASI to a linker.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<HostState>) -> wasmtime::Result<()> {
    // Rust's wasm32-wasip2 std imports WASI even if the plugin never uses it; the
    // context behind it grants nothing (see `HostState::new`).
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    since_v0_1_0::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<HostState>>(linker, |s| s)
}

/// A semantic version, as in `certline:device@0.1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next()??,
        };
        parts.next().is_none().then_some(v)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Whether a plugin built against `found` can run here, and with which bindings
/// (the newest supported version of the same major whose minor is not older).
pub fn check_version(found: Version) -> Result<Version, String> {
    let newest = *SUPPORTED.last().expect("at least one supported version");
    let same_major: Vec<&Version> = SUPPORTED
        .iter()
        .filter(|v| v.major == found.major)
        .collect();
    let Some(newest_of_major) = same_major.last() else {
        return Err(format!(
            "the plugin was built against {PACKAGE}@{found}, another major version than this host's {PACKAGE}@{newest}; rebuild it against {PACKAGE}@{newest}"
        ));
    };
    if found.minor > newest_of_major.minor {
        return Err(format!(
            "the plugin was built against {PACKAGE}@{found}, newer than this host's {PACKAGE}@{newest_of_major}; update certline or rebuild the plugin against {PACKAGE}@{newest_of_major}"
        ));
    }
    same_major
        .iter()
        .find(|v| v.minor == found.minor)
        .map(|v| **v)
        .ok_or_else(|| {
            format!("the plugin was built against {PACKAGE}@{found}, which this host no longer supports (it supports {PACKAGE}@{newest})")
        })
}

/// The table entry behind the plugin's `link` resource. There is one link per
/// store; the entry only stands for it.
pub struct LinkHandle;

/// Caps a plugin's linear memory and tables, and remembers when it hit the cap
/// so the error can say so.
pub struct Limiter {
    pub memory_cap: usize,
    pub memory_hit: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_hit = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }

    fn tables(&self) -> usize {
        64
    }
}

/// Most log lines one store may write; more would let a plugin flood the log.
const MAX_LOG_LINES: u32 = 200;
const MAX_LOG_CHARS: usize = 500;
/// Largest single write a plugin may hand the link.
const MAX_WRITE: usize = 1 << 20;

/// Everything a plugin's store holds: the link, the deadline, what the plugin
/// reported, and an empty WASI context.
pub struct HostState {
    pub plugin: String,
    pub link: Option<Box<dyn DeviceLink>>,
    pub deadline: Instant,
    pub received: bool,
    pub limiter: Limiter,
    log_lines: u32,
    table: ResourceTable,
    wasi: WasiCtx,
}

/// A wall clock stuck at the epoch: the WIT interface grants no wall clock, but
/// Rust's std links one; this keeps the time of day out of the plugin.
struct NoWallClock;

impl wasmtime_wasi::HostWallClock for NoWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostState {
    pub fn new(
        plugin: &str,
        link: Option<Box<dyn DeviceLink>>,
        deadline: Instant,
        memory_cap: usize,
    ) -> Self {
        // No preopened folders, no environment, no arguments, no sockets, stdio
        // closed or discarded.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(NoWallClock)
            .build();
        HostState {
            plugin: plugin.to_string(),
            link,
            deadline,
            received: false,
            limiter: Limiter {
                memory_cap,
                memory_hit: None,
            },
            log_lines: 0,
            table: ResourceTable::new(),
            wasi,
        }
    }

    /// A new link resource for one call.
    pub fn link_resource(&mut self) -> wasmtime::Result<Resource<LinkHandle>> {
        Ok(self.table.push(LinkHandle)?)
    }

    fn link(&mut self) -> Result<&mut Box<dyn DeviceLink>, LinkError> {
        self.link.as_mut().ok_or(LinkError::Closed)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn to_wit(e: LinkFailure) -> LinkError {
    match e {
        LinkFailure::Timeout => LinkError::Timeout,
        LinkFailure::Closed => LinkError::Closed,
        LinkFailure::Io(m) => LinkError::Io(m),
    }
}

impl latest::certline::device::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_CHARS {
            let mut end = MAX_LOG_CHARS;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let plugin = &self.plugin;
        match level {
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn report(&mut self, stage: Stage) {
        match stage {
            Stage::Received => self.received = true,
        }
    }
}

impl latest::certline::device::host::HostLink for HostState {
    fn read(
        &mut self,
        _link: Resource<LinkHandle>,
        max: u32,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, LinkError> {
        // The plugin's timeout never outlasts the host's deadline for the
        // whole device operation.
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LinkError::Timeout);
        }
        let timeout = Duration::from_millis(timeout_ms.into()).min(left);
        self.link()?.read(max as usize, timeout).map_err(to_wit)
    }

    fn write(&mut self, _link: Resource<LinkHandle>, data: Vec<u8>) -> Result<(), LinkError> {
        if data.len() > MAX_WRITE {
            return Err(LinkError::Io(format!(
                "a write of {} bytes is over the host's limit of {MAX_WRITE}",
                data.len()
            )));
        }
        self.link()?.write(&data).map_err(to_wit)
    }

    fn close(&mut self, _link: Resource<LinkHandle>) {
        if let Ok(link) = self.link() {
            link.close();
        }
    }

    fn drop(&mut self, link: Resource<LinkHandle>) -> wasmtime::Result<()> {
        self.table.delete(link)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = |s| Version::parse(s).unwrap();
        assert_eq!(check_version(v("0.1.0")).unwrap(), v("0.1.0"));
        assert_eq!(check_version(v("0.1.7")).unwrap(), v("0.1.0"));
        let newer = check_version(v("0.2.0")).unwrap_err();
        assert!(
            newer.contains("certline:device@0.2.0") && newer.contains("certline:device@0.1.0"),
            "{newer}"
        );
        let major = check_version(v("1.0.0")).unwrap_err();
        assert!(
            major.contains("another major version") && major.contains("@1.0.0"),
            "{major}"
        );
        assert!(Version::parse("0.1").is_none());
        assert!(Version::parse("0.1.0.0").is_none());
    }
}
