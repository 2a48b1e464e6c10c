//! The device-plugin host (wasmtime, component model).
//!
//! A vendor's plugin is a WebAssembly component of the `certline:device` world
//! (`wit/`). The host checks the file before wasmtime sees it, reads the
//! interface version from the component's type and refuses one it cannot run,
//! compiles it once and pre-instantiates it once ([`Plugin`]). Every device
//! operation then gets a fresh [`wasmtime::Store`] with a fuel budget per call, a
//! memory cap and a deadline (enforced by epoch interruption inside the
//! plugin's code and by every host call), and the caps of [`sandbox`] on what
//! it may push through the host; so a plugin that traps, loops, hoards memory,
//! floods the link or answers nonsense fails that one operation with an error
//! naming the plugin and the cause ([`OpError`]), and the next operation
//! starts clean. [`folder::PluginFolder`] maps model codes to plugins and
//! hot-reloads them; [`bindings`] holds one module per frozen WIT version.

mod bindings;
pub mod cli;
pub mod folder;
pub mod sandbox;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap};

use bindings::{Bindings, Instance};
pub use bindings::{Version, FROZEN, SUPPORTED};
use sandbox::{plugin_text, HostState, Violation};

use crate::link::{DeviceLink, LinkFailure};
use crate::pki::id::{check_model, DeviceId};
use crate::pki::pack::Pack;

/// Largest plugin file the host reads.
pub const MAX_PLUGIN_BYTES: usize = 32 << 20;

/// What one device operation may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Fuel (about one unit per wasm instruction) for each call into the plugin.
    pub fuel: u64,
    /// Cap on the plugin's linear memory, bytes.
    pub memory: usize,
    /// Wall-clock limit of one device operation (all its calls and link waits).
    pub deadline: Duration,
}

/// How often the engine's epoch advances: the granularity of the deadline
/// inside a plugin's own code.
const EPOCH_TICK: Duration = Duration::from_millis(10);

impl Default for Limits {
    fn default() -> Self {
        // A write through the example plugins takes a few million units; a
        // thousand times that is still well under a second of CPU.
        Limits {
            fuel: 2_000_000_000,
            memory: 64 << 20,
            deadline: Duration::from_secs(60),
        }
    }
}

/// The wasmtime engine and linker shared by every plugin of a host.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
}

impl PluginEngine {
    pub fn new(limits: Limits) -> anyhow::Result<Arc<PluginEngine>> {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
        spawn_epoch_ticker(&engine)?;
        let mut linker = Linker::new(&engine);
        bindings::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
        Ok(Arc::new(PluginEngine {
            engine,
            linker,
            limits,
        }))
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Loads a plugin file: checks it, compiles it, checks its interface
    /// version, pre-instantiates it and asks it who it is.
    pub fn load(self: &Arc<Self>, path: &Path) -> anyhow::Result<Plugin> {
        let bytes = read_limited(path)?;
        self.load_bytes(path, &bytes)
            .with_context(|| format!("plugin {} refused", path.display()))
    }

    fn load_bytes(self: &Arc<Self>, path: &Path, bytes: &[u8]) -> anyhow::Result<Plugin> {
        check_header(bytes)?;
        let started = Instant::now();
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            anyhow::anyhow!("not a valid WebAssembly component: {}", e.root_cause())
        })?;
        let compile_time = started.elapsed();

        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let interface = interface_version(&exports)?;
        let bindings_version = bindings::check_version(interface).map_err(anyhow::Error::msg)?;
        check_imports(&imports)?;

        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!(
                "it imports something this host does not grant: {}",
                e.root_cause()
            )
        })?;
        let bindings = Bindings::new(bindings_version, pre).map_err(|e| {
            anyhow::anyhow!(
                "it does not implement the {} world: {}",
                bindings::EXPORT,
                e.root_cause()
            )
        })?;
        let mut plugin = Plugin {
            engine: self.clone(),
            path: path.to_path_buf(),
            sha256: crate::pki::fingerprint(bytes),
            size: bytes.len(),
            interface,
            exports,
            imports,
            compile_time,
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                models: Vec::new(),
            },
            bindings,
        };
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let info = plugin.with_session(&label, None, |s| {
            s.call("info", |inst, store| inst.info(store))
        })?;
        plugin.info = validate_info(info)?;
        Ok(plugin)
    }
}

/// Advances `engine`'s epoch every [`EPOCH_TICK`] while the engine lives
/// (epoch deadlines do nothing unless something advances the epoch).
fn spawn_epoch_ticker(engine: &Engine) -> anyhow::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .context("cannot start the plugin deadline thread")?;
    Ok(())
}

fn read_limited(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read plugin {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("plugin {} is not a file", path.display());
    }
    if meta.len() > MAX_PLUGIN_BYTES as u64 {
        anyhow::bail!(
            "plugin {} is {} bytes, over the limit of {MAX_PLUGIN_BYTES}",
            path.display(),
            meta.len()
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))
}

/// Looks at the preamble before wasmtime does, to say plainly what the file is.
fn check_header(bytes: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE: [u8; 4] = [1, 0, 0, 0];
    const COMPONENT: [u8; 4] = [0x0d, 0, 0x01, 0];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        anyhow::bail!("not a WebAssembly file (it does not start with \\0asm)");
    }
    match bytes[4..8].try_into().unwrap() {
        COMPONENT => Ok(()),
        CORE => anyhow::bail!(
            "a core WebAssembly module, not a component: build the plugin for the wasm32-wasip2 target"
        ),
        other => anyhow::bail!("unknown WebAssembly version/layer {other:02x?}"),
    }
}

/// The version of the `certline:device/device` interface a component exports.
fn interface_version(exports: &[String]) -> anyhow::Result<Version> {
    let prefix = format!("{}@", bindings::EXPORT);
    let Some(name) = exports
        .iter()
        .find(|e| e.starts_with(&prefix) || *e == bindings::EXPORT)
    else {
        anyhow::bail!(
            "it does not export {} (it exports: {}); it is not a certline device plugin (wrong world)",
            bindings::EXPORT,
            if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
        );
    };
    let text = name.strip_prefix(&prefix).unwrap_or("");
    Version::parse(text).with_context(|| {
        format!("export {name} has no usable version (expected {prefix}MAJOR.MINOR.PATCH)")
    })
}

/// What a plugin may import: its host interface, and the parts of WASI that
/// Rust's standard library links even when unused (the context behind them
/// grants nothing: no environment, closed stdin, discarded output, a wall clock
/// stuck at zero). Files and sockets are not among them.
const GRANTED_IMPORTS: &[&str] = &[
    "certline:device/host@",
    "wasi:io/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:random/",
];

fn check_imports(imports: &[String]) -> anyhow::Result<()> {
    let refused: Vec<&str> = imports
        .iter()
        .filter(|i| !GRANTED_IMPORTS.iter().any(|g| i.starts_with(g)))
        .map(String::as_str)
        .collect();
    if !refused.is_empty() {
        anyhow::bail!(
            "it imports {}, which this host does not grant (a plugin gets its device link, a log and nothing else)",
            refused.join(", ")
        );
    }
    Ok(())
}

/// Who a plugin says it is, checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub models: Vec<String>,
}

fn validate_info(info: bindings::PluginInfo) -> anyhow::Result<PluginInfo> {
    let name_ok = !info.name.is_empty()
        && info.name.chars().count() <= 64
        && crate::text::is_printable(&info.name);
    if !name_ok {
        anyhow::bail!(
            "malformed answer from info: plugin name \"{}\" must be 1-64 printable characters",
            plugin_text(&info.name)
        );
    }
    if info.version.is_empty()
        || info.version.len() > 64
        || !crate::text::is_printable(&info.version)
    {
        anyhow::bail!(
            "malformed answer from info: plugin version \"{}\" must be 1-64 printable characters",
            plugin_text(&info.version)
        );
    }
    if info.models.is_empty() {
        anyhow::bail!(
            "malformed answer from info: plugin {} serves no model code",
            info.name
        );
    }
    for (i, m) in info.models.iter().enumerate() {
        check_model(m)
            .map_err(|e| anyhow::anyhow!("malformed answer from info: {}", plugin_text(&e)))?;
        if info.models[..i].contains(m) {
            anyhow::bail!(
                "malformed answer from info: plugin {} claims model code {m} twice",
                info.name
            );
        }
    }
    Ok(PluginInfo {
        name: info.name,
        version: info.version,
        models: info.models,
    })
}

/// A loaded, pre-instantiated plugin.
pub struct Plugin {
    engine: Arc<PluginEngine>,
    pub path: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    pub size: usize,
    /// The `certline:device` version it was built against.
    pub interface: Version,
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    pub compile_time: Duration,
    pub info: PluginInfo,
    bindings: Bindings,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("info", &self.info)
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

/// Why a device operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("trapped in {call}: {detail}")]
    Trap { call: &'static str, detail: String },
    #[error("used up its fuel budget of {fuel} in {call} (is it looping?)")]
    OutOfFuel { call: &'static str, fuel: u64 },
    #[error("ran past the device operation's deadline of {secs} s in {call} (is it looping or waiting forever?)")]
    Deadline { call: &'static str, secs: u64 },
    #[error("broke a rule of the host in {call}: {rule}")]
    Rule { call: &'static str, rule: String },
    #[error("went over its memory cap of {cap} MiB in {call} (it asked for {asked} MiB)")]
    Memory {
        call: &'static str,
        cap: usize,
        asked: usize,
    },
    #[error("malformed answer from {call}: {detail}")]
    Malformed { call: &'static str, detail: String },
    #[error("link failure in {call}: {failure}")]
    Link {
        call: &'static str,
        failure: LinkFailure,
    },
    #[error("device protocol error in {call}: {detail}")]
    Protocol { call: &'static str, detail: String },
    #[error("the device refused in {call}: {reason}")]
    Device { call: &'static str, reason: String },
    #[error("the device is {found}, but the pack is for {expected} (wrong rating plate scanned?)")]
    WrongDevice { found: String, expected: String },
    #[error("read-back mismatch: {detail}")]
    ReadBack { detail: String },
    #[error("proof of possession failed: {detail}")]
    Possession { detail: String },
    #[error("host error: {0}")]
    Host(String),
}

/// A failed device operation: which plugin, what went wrong, and whether the
/// device had confirmed it received the pack (the station needs to know).
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin}: {fault}{}", if *received { " (after the device reported \"received\")" } else { "" })]
pub struct OpError {
    pub plugin: String,
    pub fault: Fault,
    pub received: bool,
}

/// What a device holds, as its plugin reported it (checked).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceIdentity {
    pub device_id: String,
    pub fingerprint: Option<String>,
}

/// A pack ready to write: the PEMs plus what the host checks against.
pub struct WriteJob {
    pub device_id: DeviceId,
    pub fingerprint: String,
    cert_der: Vec<u8>,
    pack: bindings::Pack,
}

impl WriteJob {
    /// The DER of the device certificate being written.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn new(pack: &Pack) -> anyhow::Result<WriteJob> {
        let cert_der = pack.device_cert_der()?;
        let identity = pack.identity()?;
        Ok(WriteJob {
            device_id: identity.id.clone(),
            fingerprint: crate::pki::fingerprint(&cert_der),
            cert_der,
            pack: bindings::Pack {
                device_id: identity.id.to_string(),
                root_pem: pack.root_pem.clone(),
                chain_pem: pack.chain_pem.clone(),
                key_pem: pack.key_pem.to_string(),
            },
        })
    }
}

/// How a write went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteReport {
    pub plugin: String,
    pub device_id: String,
    /// What the device held before (when the identity was checked first).
    pub before: Option<DeviceIdentity>,
    pub received: bool,
    pub written: bool,
    /// What the device reported after the write; matches the pack.
    pub read_back: DeviceIdentity,
    /// The device signed the host's challenge with the new key.
    pub possession_proved: bool,
    /// Time spent creating the store and instantiating the plugin.
    #[serde(serialize_with = "micros")]
    pub instantiate: Duration,
    #[serde(serialize_with = "micros")]
    pub total: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_micros())
}

/// Whether to ask the device who it is before writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precheck {
    /// Read the identity first and refuse to write to another device.
    CheckId,
    /// Send the pack regardless (to test the device's own id check).
    Skip,
}

/// One store with one instance: the calls of one device operation.
struct Session<'p> {
    plugin: &'p Plugin,
    label: String,
    store: Store<HostState>,
    instance: Instance,
    instantiate: Duration,
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn serves(&self, model: &str) -> bool {
        self.info.models.iter().any(|m| m == model)
    }

    /// Runs `f` in a fresh store with a fresh instance. The link (if any) is
    /// moved into the store for the calls and put back afterwards, whatever
    /// happened.
    fn with_session<R>(
        &self,
        label: &str,
        mut link: Option<&mut Box<dyn DeviceLink>>,
        f: impl FnOnce(&mut Session<'_>) -> Result<R, OpError>,
    ) -> Result<R, OpError> {
        let limits = self.engine.limits;
        let started = Instant::now();
        let lent = link.as_deref_mut().map(take);
        let state = HostState::new(label, lent, started + limits.deadline, limits.memory);
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(epoch_ticks(limits.deadline));
        let instance = store
            .set_fuel(limits.fuel)
            .and_then(|()| self.bindings.instantiate(&mut store));
        let (result, mut store) = match instance {
            Ok(instance) => {
                let mut s = Session {
                    plugin: self,
                    label: label.to_string(),
                    store,
                    instance,
                    instantiate: started.elapsed(),
                };
                (f(&mut s), s.store)
            }
            Err(e) => {
                let fault = Fault::Trap {
                    call: "instantiate",
                    detail: e.root_cause().to_string(),
                };
                (
                    Err(OpError {
                        plugin: label.to_string(),
                        fault,
                        received: false,
                    }),
                    store,
                )
            }
        };
        if let (Some(slot), Some(real)) = (link, store.data_mut().link.take()) {
            *slot = real;
        }
        result
    }

    /// Asks the device which identity it holds. `link` is lent to the plugin
    /// for the call.
    pub fn read_identity(&self, link: &mut Box<dyn DeviceLink>) -> Result<DeviceIdentity, OpError> {
        self.with_session(self.name(), Some(link), |s| s.read_identity())
    }

    /// Writes `job` to the device in one store: (optionally) checks the device's
    /// id, writes the pack, reads the identity back and compares it with the
    /// pack, and has the device prove it holds the new key.
    pub fn write(
        &self,
        link: &mut Box<dyn DeviceLink>,
        job: &WriteJob,
        precheck: Precheck,
    ) -> Result<WriteReport, OpError> {
        let started = Instant::now();
        self.with_session(self.name(), Some(link), |s| s.write(job, precheck, started))
    }

    /// Checks, in one session, that the device holds the certificate
    /// `cert_der` (issued for `id`) and can use its key: read back,
    /// fingerprint, proof of possession. How a line that stopped in the middle
    /// of a write finds out whether the write happened.
    pub fn verify(
        &self,
        link: &mut Box<dyn DeviceLink>,
        id: &DeviceId,
        cert_der: &[u8],
    ) -> Result<DeviceIdentity, OpError> {
        let fingerprint = crate::pki::fingerprint(cert_der);
        self.with_session(self.name(), Some(link), |s| {
            s.verify(&id.to_string(), &fingerprint, cert_der)
        })
    }

    /// Store creation, instantiation and one trivial call, without a device:
    /// the host's own cost per operation (for the benchmark).
    pub fn overhead_probe(&self) -> Result<(Duration, Duration), OpError> {
        let started = Instant::now();
        self.with_session(self.name(), None, |s| {
            let instantiated = started.elapsed();
            s.call("info", |inst, store| inst.info(store))?;
            Ok((instantiated, started.elapsed()))
        })
    }
}

/// What wasmtime says when a call returns still holding a borrowed handle
/// (the component model forbids it).
const KEPT_BORROW: &str = "borrow handles still remain at the end of the call";

/// Epoch ticks covering `left` (at least one).
fn epoch_ticks(left: Duration) -> u64 {
    (left.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
}

fn take(link: &mut Box<dyn DeviceLink>) -> Box<dyn DeviceLink> {
    std::mem::replace(link, Box::new(Detached))
}

/// Stands in for a link while the plugin's store holds the real one.
struct Detached;

impl DeviceLink for Detached {
    fn read(&mut self, _: usize, _: Duration) -> Result<Vec<u8>, LinkFailure> {
        Err(LinkFailure::Closed)
    }
    fn write_within(&mut self, _: &[u8], _: Duration) -> Result<(), LinkFailure> {
        Err(LinkFailure::Closed)
    }
    fn close(&mut self) {}
    fn describe(&self) -> String {
        "detached link".into()
    }
}

impl Session<'_> {
    fn fail(&self, fault: Fault) -> OpError {
        OpError {
            plugin: self.label.clone(),
            fault,
            received: self.store.data().received,
        }
    }

    /// One call into the plugin with a full fuel budget and what is left of
    /// the operation's deadline; a trap becomes the fault that caused it.
    fn call<R>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&Instance, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, OpError> {
        let fuel = self.plugin.engine.limits.fuel;
        let secs = self.plugin.engine.limits.deadline.as_secs();
        let data = self.store.data_mut();
        data.limiter.memory_hit = None;
        data.call = call;
        data.call_seq += 1;
        let left = data.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.fail(Fault::Deadline { call, secs }));
        }
        self.store.set_epoch_deadline(epoch_ticks(left));
        if let Err(e) = self.store.set_fuel(fuel) {
            return Err(self.fail(Fault::Host(e.to_string())));
        }
        match f(&self.instance, &mut self.store) {
            Ok(r) => Ok(r),
            Err(e) => {
                let violation = self.store.data_mut().violation.take();
                let fault = if let Some(v) = violation {
                    match v {
                        Violation::Deadline => Fault::Deadline { call, secs },
                        Violation::Rule(rule) => Fault::Rule { call, rule },
                    }
                } else if let Some(asked) = self.store.data().limiter.memory_hit {
                    Fault::Memory {
                        call,
                        cap: self.store.data().limiter.memory_cap >> 20,
                        asked: asked >> 20,
                    }
                } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::OutOfFuel)) {
                    Fault::OutOfFuel { call, fuel }
                } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                    Fault::Deadline { call, secs }
                } else if e.root_cause().to_string().contains(KEPT_BORROW) {
                    Fault::Rule {
                        call,
                        rule: format!(
                            "it kept the device link it was lent past the end of {call} (a link is lent for one call)"
                        ),
                    }
                } else {
                    Fault::Trap {
                        call,
                        detail: e.root_cause().to_string(),
                    }
                };
                Err(self.fail(fault))
            }
        }
    }

    /// A call that returns the WIT `result<T, error>`.
    fn device_call<R>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(
            &Instance,
            &mut Store<HostState>,
            wasmtime::component::Resource<bindings::LinkHandle>,
        ) -> wasmtime::Result<Result<R, bindings::PluginError>>,
    ) -> Result<R, OpError> {
        // The link is lent to this call only: its table entry goes when the
        // call ends, so a handle the plugin kept names nothing later.
        let mut lent = None;
        let answer = self.call(call, |inst, store| {
            let link = store.data_mut().link_resource()?;
            lent = Some(link.rep());
            f(inst, store, link)
        });
        if let Some(rep) = lent {
            self.store
                .data_mut()
                .end_link_resource(wasmtime::component::Resource::new_own(rep));
        }
        match answer? {
            Ok(r) => Ok(r),
            Err(e) => Err(self.fail(match e {
                bindings::PluginError::Link(l) => Fault::Link {
                    call,
                    failure: match l {
                        bindings::LinkError::Timeout => LinkFailure::Timeout,
                        bindings::LinkError::Closed => LinkFailure::Closed,
                        bindings::LinkError::Io(m) => LinkFailure::Io(plugin_text(&m)),
                    },
                },
                bindings::PluginError::Protocol(detail) => Fault::Protocol {
                    call,
                    detail: plugin_text(&detail),
                },
                bindings::PluginError::Device(reason) => Fault::Device {
                    call,
                    reason: plugin_text(&reason),
                },
            })),
        }
    }

    fn read_identity(&mut self) -> Result<DeviceIdentity, OpError> {
        let id = self.device_call("read-identity", |inst, store, link| {
            inst.read_identity(store, link)
        })?;
        let malformed = |detail: String| Fault::Malformed {
            call: "read-identity",
            detail,
        };
        if let Err(e) = DeviceId::parse(&id.device_id) {
            return Err(self.fail(malformed(plugin_text(&e.to_string()))));
        }
        if let Some(f) = &id.fingerprint {
            if !certline_device_protocol::hex::is_fingerprint(f) {
                return Err(self.fail(malformed(format!(
                    "fingerprint \"{}\" is not 64 lowercase hex digits",
                    plugin_text(f)
                ))));
            }
        }
        Ok(DeviceIdentity {
            device_id: id.device_id,
            fingerprint: id.fingerprint,
        })
    }

    fn write(
        &mut self,
        job: &WriteJob,
        precheck: Precheck,
        started: Instant,
    ) -> Result<WriteReport, OpError> {
        let expected = job.device_id.to_string();
        let before = match precheck {
            Precheck::CheckId => {
                let before = self.read_identity()?;
                if before.device_id != expected {
                    return Err(self.fail(Fault::WrongDevice {
                        found: before.device_id,
                        expected,
                    }));
                }
                Some(before)
            }
            Precheck::Skip => None,
        };
        self.device_call("write-pack", |inst, store, link| {
            inst.write_pack(store, link, &job.pack)
        })?;
        if !self.store.data().received {
            return Err(self.fail(Fault::Malformed {
                call: "write-pack",
                detail: "it returned ok without reporting that the device received the pack".into(),
            }));
        }
        let read_back = self.verify(&expected, &job.fingerprint, &job.cert_der)?;
        Ok(WriteReport {
            plugin: self.label.clone(),
            device_id: expected,
            before,
            received: true,
            written: true,
            read_back,
            possession_proved: true,
            instantiate: self.instantiate,
            total: started.elapsed(),
        })
    }

    /// Reads the identity back, compares it with `expected` and `fingerprint`,
    /// and has the device prove it holds the key of `cert_der`.
    fn verify(
        &mut self,
        expected: &str,
        fingerprint: &str,
        cert_der: &[u8],
    ) -> Result<DeviceIdentity, OpError> {
        let read_back = self.read_identity()?;
        if read_back.device_id != expected {
            return Err(self.fail(Fault::ReadBack {
                detail: format!(
                    "the device now reports id {}, the pack is for {expected}",
                    read_back.device_id
                ),
            }));
        }
        if read_back.fingerprint.as_deref() != Some(fingerprint) {
            return Err(self.fail(Fault::ReadBack {
                detail: format!(
                    "the device reports certificate {}, the pack's certificate is {fingerprint}",
                    read_back.fingerprint.as_deref().unwrap_or("(none)"),
                ),
            }));
        }
        let mut challenge = [0u8; 32];
        aws_lc_rs::rand::fill(&mut challenge)
            .map_err(|_| self.fail(Fault::Host("no randomness for the challenge".into())))?;
        let sig = self.device_call("prove-possession", |inst, store, link| {
            inst.prove_possession(store, link, &challenge)
        })?;
        if let Err(e) = crate::link::pop::verify(cert_der, &challenge, &sig) {
            return Err(self.fail(Fault::Possession {
                detail: e.to_string(),
            }));
        }
        Ok(read_back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert!(check_header(b"hello world")
            .unwrap_err()
            .to_string()
            .contains("not a WebAssembly file"));
        assert!(check_header(b"\0asm\x01\0\0\0")
            .unwrap_err()
            .to_string()
            .contains("core WebAssembly module"));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn files_and_sockets_are_not_granted() {
        check_imports(&[
            "certline:device/host@0.1.0".into(),
            "wasi:io/streams@0.2.6".into(),
        ])
        .unwrap();
        let err = check_imports(&[
            "wasi:sockets/tcp@0.2.6".into(),
            "wasi:filesystem/preopens@0.2.6".into(),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("wasi:sockets/tcp@0.2.6, wasi:filesystem/preopens@0.2.6"),
            "{err}"
        );
    }

    #[test]
    fn export_versions() {
        let v = interface_version(&["certline:device/device@0.1.0".into()]).unwrap();
        assert_eq!(
            v,
            Version {
                major: 0,
                minor: 1,
                patch: 0
            }
        );
        let err = interface_version(&["wasi:cli/run@0.2.6".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wasi:cli/run@0.2.6") && err.contains("wrong world"),
            "{err}"
        );
    }
}
